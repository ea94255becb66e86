//! Conversion between raw images, VHDX and VHD, in any direction (a chain
//! of either format is flattened), sparse on output. The `ckpt convert`
//! command is a thin shell over [`convert`] (it adds the progress bar).
//!
//! Depends on the rest of `disk` and on `std`; knows nothing of the CLI.
//!
//! ```no_run
//! use ckpt::disk::convert::{convert, ConvertOptions, Format};
//!
//! let opts = ConvertOptions {
//!     format: Some(Format::Raw),
//!     fixed: false,
//!     block_size: None,
//!     no_sync: false,
//!     azure: false,
//! };
//! let stats = convert("disk.vhdx".as_ref(), "disk.raw".as_ref(), &opts, &mut |_, _| {})?;
//! println!("{} bytes of data", stats.data_bytes);
//! # Ok::<(), ckpt::Error>(())
//! ```
//!
//! * The source's format is read from its content: a file starting with
//!   `vhdxfile` is a VHDX, one starting or ending with a VHD footer
//!   (`conectix`) a VHD, anything else is raw.
//! * An Azure-ready VHD ([`ConvertOptions::azure`]): fixed, its virtual
//!   size rounded up to a whole MiB (the tail reads as zeros), the footer
//!   with the current size Azure reads (creator "win ", the CHS geometry
//!   of the specification), nothing after the footer.
//! * A raw source whose length is not a multiple of 512 is **rounded up** to
//!   the next multiple of 512 (the tail reads as zeros), because a VHDX's
//!   virtual size must be a whole number of sectors; VHDX → raw then gives
//!   back the rounded length. [`ConvertStats::rounded_up`] says when it
//!   happened.
//! * Output is sparse: unallocated ranges of a VHDX source are skipped, and
//!   so is every all-zero 4 KiB piece of data; a raw output is made with
//!   `set_len` and has holes there, a VHDX output leaves its blocks
//!   unallocated.
//! * An existing destination is never overwritten; a destination left
//!   half-written by a failure is removed.
//! * The destination is durable when [`convert`] returns (synced; a VHDX
//!   through its log protocol), unless [`ConvertOptions::no_sync`] asks
//!   for none: then it is complete for every reader once `convert`
//!   returns, but a power loss before the system writes it back may leave
//!   it torn (what `qemu-img convert` does by default; run `sync` after).
//! * The source is read on a thread of its own, a few chunks ahead of the
//!   writes.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::disk::{CreateOptions, Disk, Extent, OpenMode, VhdOptions, MIB};
use crate::error::{Error, Result};
use crate::io::{FileStorage, Storage};

/// How much is read and written at a time.
const CHUNK: u64 = 1 << 20;
/// The granularity of zero detection (what becomes a hole).
const ZERO_GRAIN: usize = 4096;
/// Raw sizes are rounded up to this.
const SECTOR: u64 = 512;

/// An image format `convert` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A plain byte-for-byte image.
    Raw,
    /// A Hyper-V VHDX.
    Vhdx,
    /// A legacy VHD (fixed or dynamic on output).
    Vhd,
}

impl Format {
    /// "raw" or "vhdx".
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Vhdx => "vhdx",
            Format::Vhd => "vhd",
        }
    }
}

/// What the destination should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertOptions {
    /// The destination format; `None`: from the destination's extension.
    pub format: Option<Format>,
    /// Make a fixed VHDX or VHD (not for raw output).
    pub fixed: bool,
    /// Block size of a VHDX or VHD output; `None`: for a VHDX the
    /// source's, or the default; for a VHD 2 MiB.
    pub block_size: Option<u32>,
    /// Make an Azure-ready VHD: fixed, the size rounded up to a whole MiB
    /// (VHD output only; implies `fixed`).
    pub azure: bool,
    /// Skip every sync of the destination (see the module doc): faster,
    /// not durable across a power loss until the system writes it back.
    pub no_sync: bool,
}

/// A file whose syncs do nothing (`ConvertOptions::no_sync`).
#[derive(Debug)]
struct NoSync(crate::io::FileStorage);

impl crate::io::Storage for NoSync {
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.write_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.0.discard(offset, len)
    }
    fn allocate(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.0.allocate(offset, len)
    }
    fn sync_retry_is_safe(&self) -> bool {
        // Nothing is ever claimed durable.
        true
    }
}

/// What a conversion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertStats {
    /// The source's format (from its content).
    pub src_format: Format,
    /// The destination's format.
    pub dst_format: Format,
    /// Size of the virtual disk in bytes.
    pub virtual_size: u64,
    /// Bytes of non-zero data written to the destination.
    pub data_bytes: u64,
    /// The raw source's length was not a multiple of 512 and was rounded up.
    pub rounded_up: bool,
}

fn in_file(e: impl Into<Error>, path: &Path) -> Error {
    e.into().in_file(path)
}

/// The format of the file at `path`, from its content: its first 8 bytes
/// (`vhdxfile`, or a VHD footer copy's `conectix`), or its last 512 (a
/// VHD footer).
pub fn detect_format(path: &Path) -> Result<Format> {
    let mut f = File::open(path).map_err(|e| in_file(e, path))?;
    let mut magic = [0u8; 8];
    let n = read_full(&mut f, &mut magic).map_err(|e| in_file(e, path))?;
    if &magic[..n] == b"vhdxfile" {
        return Ok(Format::Vhdx);
    }
    let len = f.seek(SeekFrom::End(0)).map_err(|e| in_file(e, path))?;
    let mut tail = [0u8; 8];
    let footer =
        len >= 512 && f.read_exact_at(&mut tail, len - 512).is_ok() && &tail == b"conectix";
    Ok(if &magic[..n] == b"conectix" || footer {
        Format::Vhd
    } else {
        Format::Raw
    })
}

/// Fill `buf` from `r` as far as possible; returns the bytes read (short
/// only at end of input).
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The format a destination path asks for: `.vhdx` / `.avhdx` → VHDX,
/// `.vhd` / `.avhd` → VHD, anything else → raw.
pub fn format_from_extension(path: &Path) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("vhdx") || e.eq_ignore_ascii_case("avhdx") => {
            Format::Vhdx
        }
        Some(e) if e.eq_ignore_ascii_case("vhd") || e.eq_ignore_ascii_case("avhd") => Format::Vhd,
        _ => Format::Raw,
    }
}

/// Whether every byte of `buf` is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    static ZEROS: [u8; ZERO_GRAIN] = [0; ZERO_GRAIN];
    // Slice comparison is a memcmp: fast even in a debug build.
    buf.chunks(ZERO_GRAIN).all(|c| c == &ZEROS[..c.len()])
}

/// Whether `e` says a file already exists.
pub fn is_already_exists(e: &Error) -> bool {
    match e {
        Error::InFile { source, .. } => is_already_exists(source),
        Error::Io(io) => io.kind() == std::io::ErrorKind::AlreadyExists,
        _ => false,
    }
}

/// Create a new VHDX at `path`, which did not exist a moment ago. If the
/// creation fails, nothing is left at `path` (unless someone else made a
/// file there meanwhile).
pub fn create_vhdx(path: &Path, opts: &CreateOptions) -> Result<Disk> {
    Disk::create(path, opts).map_err(|e| {
        if !is_already_exists(&e) {
            let _ = std::fs::remove_file(path);
        }
        e.in_file(path)
    })
}

/// A new VHD at `path`, as [`create_vhdx`] makes a VHDX.
pub fn create_vhd(path: &Path, opts: &VhdOptions) -> Result<Disk> {
    Disk::create_vhd(path, opts).map_err(|e| {
        if !is_already_exists(&e) {
            let _ = std::fs::remove_file(path);
        }
        e.in_file(path)
    })
}

/// [`create_vhdx`] (or a VHD) on a [`NoSync`] file.
fn create_no_sync(path: &Path, opts: &CreateOptions, vhd: Option<&VhdOptions>) -> Result<Disk> {
    let made = (|| {
        let f = crate::io::FileStorage::create(path).map_err(|e| in_file(e, path))?;
        let s: std::sync::Arc<dyn crate::io::Storage> = std::sync::Arc::new(NoSync(f));
        match vhd {
            Some(v) => Disk::create_vhd_on(s, v),
            None => Disk::create_on(s, opts),
        }
        .map_err(|e| e.in_file(path))
    })();
    made.inspect_err(|e| {
        if !is_already_exists(e) {
            let _ = std::fs::remove_file(path);
        }
    })
}

/// The source image, read-only.
enum Source {
    Raw { file: File, len: u64 },
    Vhdx(Box<Disk>),
}

impl Source {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match self {
            Source::Vhdx(d) => d.read_at(buf, offset),
            Source::Raw { file, len } => {
                // Bytes past the end of the file (the rounding) read as zeros.
                let avail = len.saturating_sub(offset).min(buf.len() as u64) as usize;
                let (data, tail) = buf.split_at_mut(avail);
                file.read_exact_at(data, offset)?;
                tail.fill(0);
                Ok(())
            }
        }
    }
}

/// The destination image, being written.
enum Sink {
    Raw { file: FileStorage, sync: bool },
    Vhdx(Box<Disk>),
}

impl Sink {
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        match self {
            Sink::Raw { file, .. } => Ok(file.write_at(buf, offset)?),
            Sink::Vhdx(d) => d.write_at(buf, offset),
        }
    }

    fn finish(self) -> Result<()> {
        match self {
            Sink::Raw { file, sync: true } => Ok(file.sync()?),
            Sink::Raw { sync: false, .. } => Ok(()),
            Sink::Vhdx(d) => d.close(),
        }
    }
}

/// Convert `src` into a new file `dst`. `progress(done, total)` is called
/// as the work advances (bytes of the virtual disk). On failure a
/// destination this call created is removed.
pub fn convert(
    src: &Path,
    dst: &Path,
    opts: &ConvertOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ConvertStats> {
    let dst_format = opts.format.unwrap_or_else(|| format_from_extension(dst));
    if dst_format == Format::Raw && (opts.fixed || opts.block_size.is_some()) {
        return Err(Error::InvalidArgument(
            "--fixed and --block-size apply to VHDX and VHD output only".into(),
        ));
    }
    if opts.azure && dst_format != Format::Vhd {
        return Err(Error::InvalidArgument(
            "--azure makes a VHD: the output format must be vhd".into(),
        ));
    }
    // Refuse early, before reading anything (create_new below closes the race).
    if std::fs::symlink_metadata(dst).is_ok() {
        return Err(in_file(
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "already exists; refusing to overwrite it",
            ),
            dst,
        ));
    }

    let src_format = detect_format(src)?;
    let mut rounded_up = false;
    let source = match src_format {
        Format::Vhdx | Format::Vhd => Source::Vhdx(Box::new(
            Disk::open(src, OpenMode::ReadOnly).map_err(|e| e.in_file(src))?,
        )),
        Format::Raw => {
            let mut file = File::open(src).map_err(|e| in_file(e, src))?;
            // Seeking works for block devices too, where metadata says 0.
            let len = file.seek(SeekFrom::End(0)).map_err(|e| in_file(e, src))?;
            if len == 0 {
                return Err(in_file(
                    Error::InvalidArgument("the raw image is empty".into()),
                    src,
                ));
            }
            rounded_up = len % SECTOR != 0;
            Source::Raw { file, len }
        }
    };
    let (virtual_size, extents, create) = match &source {
        Source::Vhdx(d) => {
            let info = d.info();
            let extents = d.extents().map_err(|e| e.in_file(src))?;
            let create = CreateOptions::new(info.virtual_size)
                .block_size(info.block_size)
                .logical_sector_size(info.logical_sector_size)
                .physical_sector_size(info.physical_sector_size);
            (info.virtual_size, extents, create)
        }
        Source::Raw { len, .. } => {
            let size = len.div_ceil(SECTOR) * SECTOR;
            let extents = vec![Extent {
                offset: 0,
                length: size,
                allocated: true,
            }];
            (size, extents, CreateOptions::new(size))
        }
    };
    let mut create = create.fixed(opts.fixed);
    if let Some(bs) = opts.block_size {
        create = create.block_size(bs);
    }
    // A VHD output: Azure's whole MiB, and the VHD's own default block.
    let virtual_size = if opts.azure {
        virtual_size.div_ceil(MIB) * MIB
    } else {
        virtual_size
    };
    let vhd = (dst_format == Format::Vhd).then(|| {
        VhdOptions::new(virtual_size)
            .fixed(opts.fixed || opts.azure)
            .block_size(opts.block_size.unwrap_or(2 << 20))
    });

    let sink = match dst_format {
        Format::Vhdx | Format::Vhd if opts.no_sync => {
            Sink::Vhdx(Box::new(create_no_sync(dst, &create, vhd.as_ref())?))
        }
        Format::Vhdx => Sink::Vhdx(Box::new(create_vhdx(dst, &create)?)),
        Format::Vhd => Sink::Vhdx(Box::new(create_vhd(
            dst,
            vhd.as_ref().expect("made for a VHD output"),
        )?)),
        Format::Raw => Sink::Raw {
            file: FileStorage::create(dst).map_err(|e| in_file(e, dst))?,
            sync: !opts.no_sync,
        },
    };
    // A durable bulk copy: written back as it goes, and out of the page
    // cache (a --no-sync copy leaves the write-back to the system).
    if !opts.no_sync {
        match &sink {
            Sink::Raw { file, .. } => file.set_write_behind(true),
            Sink::Vhdx(d) => d.set_write_behind(true),
        }
    }
    // From here on the destination is ours: remove it if anything fails.
    let result = copy(&source, sink, virtual_size, &extents, src, dst, progress);
    match result {
        Ok(data_bytes) => Ok(ConvertStats {
            src_format,
            dst_format,
            virtual_size,
            data_bytes,
            rounded_up,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(dst);
            Err(e)
        }
    }
}

fn copy(
    source: &Source,
    sink: Sink,
    virtual_size: u64,
    extents: &[Extent],
    src: &Path,
    dst: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64> {
    let dst_err = |e: Error| e.in_file(dst);
    if let Sink::Raw { file: f, .. } = &sink {
        f.set_len(virtual_size).map_err(|e| in_file(e, dst))?;
    }
    // The chunks to copy, aligned to CHUNK in the virtual disk.
    let mut chunks = Vec::new();
    for ext in extents.iter().filter(|e| e.allocated) {
        let end = ext.offset.saturating_add(ext.length).min(virtual_size);
        let mut pos = ext.offset;
        while pos < end {
            let next = ((pos / CHUNK + 1) * CHUNK).min(end);
            chunks.push((pos, next));
            pos = next;
        }
    }
    let mut data_bytes = 0u64;
    progress(0, virtual_size);
    std::thread::scope(|s| -> Result<()> {
        // Read ahead on a thread of its own; buffers go back and forth.
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Result<(u64, Vec<u8>)>>(2);
        let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        for _ in 0..3 {
            let _ = free_tx.send(vec![0u8; CHUNK as usize]);
        }
        let chunks = &chunks;
        s.spawn(move || {
            for &(pos, next) in chunks {
                let Ok(mut buf) = free_rx.recv() else { return };
                buf.resize((next - pos) as usize, 0);
                let r = source.read_at(&mut buf, pos).map_err(|e| e.in_file(src));
                let failed = r.is_err();
                if full_tx.send(r.map(|()| (pos, buf))).is_err() || failed {
                    return;
                }
            }
        });
        for (k, got) in full_rx.iter().enumerate() {
            let (pos, chunk) = got?;
            let len = chunk.len();
            // Write each run of non-zero grains as one request.
            let mut i = 0;
            while i < len {
                let grain = |at: usize| &chunk[at..(at + ZERO_GRAIN).min(len)];
                if is_zero(grain(i)) {
                    i += ZERO_GRAIN;
                    continue;
                }
                let start = i;
                while i < len && !is_zero(grain(i)) {
                    i += ZERO_GRAIN;
                }
                let stop = i.min(len);
                sink.write_at(&chunk[start..stop], pos + start as u64)
                    .map_err(dst_err)?;
                data_bytes += (stop - start) as u64;
            }
            // Progress up to the next chunk (skipped ranges included).
            let upto = chunks.get(k + 1).map_or(virtual_size, |c| c.0);
            progress(upto, virtual_size);
            let _ = free_tx.send(chunk);
        }
        Ok(())
    })?;
    progress(virtual_size, virtual_size);
    sink.finish().map_err(dst_err)?;
    Ok(data_bytes)
}
