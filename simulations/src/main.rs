//! `cargo run --release -p corral-simulations -- <scenario> [options]`: runs one scenario,
//! or the sweeps behind docs/simulations.md, and prints the figures.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use corral_simulations::scenarios;
use corral_simulations::sim::SimConfig;
use corral_simulations::stats::Report;

#[derive(Parser)]
#[command(about = "Deterministic simulations of Corral's gossip and failover at fleet scale")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Kill shard masters one at a time; detection, failover and traffic.
    Detect {
        #[command(flatten)]
        fleet: Fleet,
        #[arg(long, default_value_t = 5)]
        kills: u32,
        /// Seconds between two kills.
        #[arg(long, default_value_t = 12)]
        interval: u64,
    },
    /// Nobody dies; loss and short pauses. Live members declared dead per member-hour.
    FalsePositives {
        #[command(flatten)]
        fleet: Fleet,
        #[arg(long, default_value_t = 120)]
        seconds: u64,
        /// Random hosts frozen per minute.
        #[arg(long, default_value_t = 20.0)]
        pauses_per_minute: f64,
        #[arg(long, default_value_t = 1000)]
        pause_ms: u64,
    },
    /// A quiet fleet: datagrams and bytes per member per second.
    Load {
        #[command(flatten)]
        fleet: Fleet,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Joins, leaves and deaths, each at `per-minute`, then calm.
    Churn {
        #[command(flatten)]
        fleet: Fleet,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        #[arg(long, default_value_t = 10.0)]
        per_minute: f64,
    },
    /// The fleet cut in two halves, then healed.
    Partition {
        #[command(flatten)]
        fleet: Fleet,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// The sweeps: CSV and SVG charts into `--out`.
    Sweep {
        #[arg(long, default_value = "docs/simulations")]
        out: PathBuf,
        /// Largest fleet in the size sweep.
        #[arg(long, default_value_t = 10_000)]
        max_members: u32,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
}

#[derive(Args, Clone)]
struct Fleet {
    #[arg(long, default_value_t = 1000)]
    members: u32,
    /// Chance that a datagram is lost, 0..1.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Probe period (ms); the agent's default unless given.
    #[arg(long)]
    probe_ms: Option<u64>,
    #[arg(long)]
    probe_rtt_ms: Option<u64>,
    #[arg(long)]
    suspect_ms: Option<u64>,
    /// How often a member announces itself to one it holds dead (ms).
    #[arg(long)]
    announce_to_down_ms: Option<u64>,
    /// Print the figures as one CSV header and row.
    #[arg(long)]
    csv: bool,
}

impl Fleet {
    fn config(&self) -> anyhow::Result<SimConfig> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.loss),
            "--loss must be between 0 and 1, not {}",
            self.loss
        );
        let mut config = SimConfig::new(self.members, self.seed);
        config.network.loss = self.loss;
        if let Some(ms) = self.probe_ms {
            config.gossip.probe_period = Duration::from_millis(ms);
        }
        if let Some(ms) = self.probe_rtt_ms {
            config.gossip.probe_rtt = Duration::from_millis(ms);
        }
        if let Some(ms) = self.suspect_ms {
            config.gossip.suspect_to_down = Duration::from_millis(ms);
        }
        if let Some(ms) = self.announce_to_down_ms {
            config.gossip.announce_to_down_period = Duration::from_millis(ms);
        }
        config
            .gossip
            .validate()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(config)
    }
}

fn print(report: &Report, csv: bool) {
    if csv {
        println!("{}\n{}", report.csv_header(), report.csv_row());
    } else {
        print!("{}", report.to_text());
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (report, csv) = match cli.scenario {
        Scenario::Detect {
            fleet,
            kills,
            interval,
        } => (
            scenarios::detect(fleet.config()?, kills, interval)?,
            fleet.csv,
        ),
        Scenario::FalsePositives {
            fleet,
            seconds,
            pauses_per_minute,
            pause_ms,
        } => (
            scenarios::false_positives(fleet.config()?, seconds, pauses_per_minute, pause_ms)?,
            fleet.csv,
        ),
        Scenario::Load { fleet, seconds } => {
            (scenarios::load(fleet.config()?, seconds)?, fleet.csv)
        }
        Scenario::Churn {
            fleet,
            seconds,
            per_minute,
        } => (
            scenarios::churn(fleet.config()?, seconds, per_minute)?,
            fleet.csv,
        ),
        Scenario::Partition { fleet, seconds } => {
            (scenarios::partition(fleet.config()?, seconds)?, fleet.csv)
        }
        Scenario::Sweep {
            out,
            max_members,
            seed,
        } => return corral_simulations::plot::sweep(&out, max_members, seed),
    };
    print(&report, csv);
    Ok(())
}
