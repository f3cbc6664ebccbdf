//! `cargo run --release -p corral-simulations -- <scenario> [options]`: runs one scenario,
//! or the sweeps behind docs/simulations.md, and prints the figures.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use corral_agent::replica::feed_tree::FeedTree;
use corral_simulations::scenarios;
use corral_simulations::sim::SimConfig;
use corral_simulations::stats::Report;
use corral_simulations::writes::{self, WritesConfig};

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
    /// Writes through the feed tree; a share of the relays dies at once.
    Writes {
        #[arg(long, default_value_t = 1000)]
        members: u32,
        /// Writes per second.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// How long writes go on (s).
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Agents the core feeds (0: the core feeds every agent).
        #[arg(long, default_value_t = corral_agent::replica::feed_tree::TOP_DEFAULT)]
        feed_top: usize,
        #[arg(long, default_value_t = corral_agent::replica::feed_tree::FANOUT_DEFAULT)]
        feed_fanout: usize,
        /// Share of the relays that die at once, 5 s in.
        #[arg(long, default_value_t = 0.1)]
        relays_dying: f64,
        /// Time an agent takes to apply one entry (µs); `apply-cost` measures it.
        #[arg(long)]
        apply_us: Option<u64>,
        /// Chance that a datagram is lost, 0..1.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        #[arg(long)]
        csv: bool,
    },
    /// Times the agent's own decoding and applying of entries: µs per entry.
    ApplyCost {
        #[arg(long, default_value_t = 200_000)]
        entries: u64,
        #[arg(long, default_value_t = 256)]
        value_bytes: usize,
    },
    /// The write sweep (1,000 to 50,000 agents, 100 and 1,000 writes/s, with and
    /// without the feed tree): CSV and SVG charts into `--out`.
    WritesSweep {
        #[arg(long, default_value = "docs/simulations")]
        out: PathBuf,
        #[arg(long, default_value_t = 50_000)]
        max_members: u32,
        #[arg(long, default_value_t = 7)]
        seed: u64,
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
        Scenario::Writes {
            members,
            rate,
            seconds,
            seed,
            feed_top,
            feed_fanout,
            relays_dying,
            apply_us,
            loss,
            csv,
        } => {
            anyhow::ensure!(
                (0.0..=1.0).contains(&loss),
                "--loss must be between 0 and 1, not {loss}"
            );
            anyhow::ensure!(
                seconds > 0.0 && seconds <= 3_600.0,
                "--seconds must be above 0 and at most 3,600"
            );
            let mut config = WritesConfig::new(members, rate, seed);
            config.seconds = seconds;
            config.tree = FeedTree {
                top: feed_top,
                fanout: feed_fanout,
            };
            config.relays_dying = relays_dying;
            config.network.loss = loss;
            if let Some(apply_us) = apply_us {
                config.apply_us = apply_us;
            }
            (writes::run(&config)?, csv)
        }
        Scenario::ApplyCost {
            entries,
            value_bytes,
        } => {
            anyhow::ensure!(
                (1..=10_000_000).contains(&entries) && value_bytes <= 1 << 20,
                "--entries must be 1..10,000,000 and --value-bytes at most 1 MiB"
            );
            let per_entry = writes::apply_cost(entries, value_bytes)?;
            println!(
                "{entries} entries of {value_bytes}-byte puts decoded and applied by the agent's replica: {per_entry:.2} µs per entry"
            );
            return Ok(());
        }
        Scenario::WritesSweep {
            out,
            max_members,
            seed,
        } => return corral_simulations::plot::writes_sweep(&out, max_members, seed),
        Scenario::Sweep {
            out,
            max_members,
            seed,
        } => return corral_simulations::plot::sweep(&out, max_members, seed),
    };
    print(&report, csv);
    Ok(())
}
