//! Temporary stand-in for `countiq load` until the lead wires the subcommand
//! into `src/main.rs`: parses `LoadArgs`, runs, prints, and exits non-zero
//! when the correctness check fails.
use clap::Parser;

#[derive(Parser)]
#[command(name = "countiq-load", about = "CountIQ load generator")]
struct Cli {
    #[command(flatten)]
    load: countiq::load::LoadArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let json = cli.load.json;
    let report = countiq::load::run(cli.load).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        countiq::load::print_human(&report);
    }
    if !report.ok() {
        std::process::exit(1);
    }
    Ok(())
}
