//! `ckpt`: the command-line tool of libckpt (create, info, check, convert,
//! read, write and bench on VHDX files and differencing chains; merge,
//! changes and reparent on chains; `vm` and `checkpoint` on VM folders and
//! their checkpoint trees). A thin shell over the library; the code lives
//! in `src/bin/ckpt/cli/`.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
