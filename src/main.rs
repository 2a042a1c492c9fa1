use clap::Parser;

/// mimalloc: measured 10-15 % less CPU per mail than glibc's allocator on the relay and s2s
/// paths (BENCHMARKS.md, run D). Its arenas are large mappings, which the kernel backs with
/// transparent huge pages: every fresh 2 MiB page is then zeroed at first touch, which made
/// 1 MiB mails cost 70 % more CPU. `main` turns THP off for the process first.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours. A
    // kernel without it returns an error, which only costs the speed-up.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let cli = xmta::cli::Cli::parse();
    if let Err(e) = xmta::cli::run(cli) {
        eprintln!("xmta: {e}");
        std::process::exit(1);
    }
}
