fn main() {
    let d = std::path::Path::new("/tmp/vt");
    let _ = std::fs::remove_file(d.join("base.vhd"));
    let _ = std::fs::remove_file(d.join("child.avhd"));
    let b = d.join("base.vhd");
    let c = d.join("child.avhd");
    let base = ckpt::Disk::create_vhd(&b, &ckpt::VhdOptions::new(4 << 20)).unwrap();
    base.write_at(&[1u8; 2 << 20], 0).unwrap();
    base.close().unwrap();
    let ch = ckpt::Disk::create_child(&c, &b, &Default::default()).unwrap();
    let a: u64 = std::env::args().nth(1).unwrap().parse().unwrap();
    let n: usize = std::env::args().nth(2).unwrap().parse().unwrap();
    ch.write_at(&vec![2u8; n], a).unwrap();
    ch.close().unwrap();
}
