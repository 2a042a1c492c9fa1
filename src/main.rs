use clap::Parser;

fn main() {
    let cli = xmta::cli::Cli::parse();
    if let Err(e) = xmta::cli::run(cli) {
        eprintln!("xmta: {e}");
        std::process::exit(1);
    }
}
