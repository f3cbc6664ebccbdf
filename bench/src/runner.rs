//! Closed-loop load: N clients, each issuing its next operation when the last one
//! answers, for a fixed time after a warm-up. Every system runs through this same loop.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::machine::CpuPerOp;

/// One operation. It returns the latency to record when that is not the whole call
/// (a lock's wait, without its release), or None to record the call's own duration.
pub type OpFuture = Pin<Box<dyn Future<Output = anyhow::Result<Option<Duration>>> + Send>>;
pub type Op = Box<dyn FnMut() -> OpFuture + Send>;

/// What one run of one workload measured.
#[derive(Clone, Debug)]
pub struct Sample {
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub histogram: Histogram<u64>,
    /// The CPU spent per operation, where the run measured it.
    pub cpu: Option<CpuPerOp>,
}

impl Sample {
    pub fn ops_per_second(&self) -> f64 {
        self.ops as f64 / self.seconds.max(f64::EPSILON)
    }

    /// A latency quantile in microseconds.
    pub fn quantile_us(&self, q: f64) -> u64 {
        self.histogram.value_at_quantile(q)
    }
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// Runs every op in `clients` concurrently: `warmup` unrecorded, then `measure` recorded.
pub async fn closed_loop(clients: Vec<Op>, warmup: Duration, measure: Duration) -> Sample {
    let start = Instant::now() + warmup;
    let end = start + measure;
    let mut tasks = Vec::new();
    for mut op in clients {
        tasks.push(tokio::spawn(async move {
            let mut histogram = new_histogram();
            let mut errors = 0u64;
            let mut first_error = None;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let result = op().await;
                let done = Instant::now();
                let recording = t >= start && done <= end;
                match result {
                    Ok(latency) => {
                        if recording {
                            let latency = latency.unwrap_or(done - t);
                            let _ = histogram.record((latency.as_micros() as u64).max(1));
                        }
                    }
                    Err(error) => {
                        if recording {
                            errors += 1;
                        }
                        first_error.get_or_insert_with(|| format!("{error:#}"));
                        // A failing system must not turn the loop into a spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (histogram, errors, first_error)
        }));
    }
    let mut histogram = new_histogram();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        if let Ok((h, e, f)) = task.await {
            let _ = histogram.add(&h);
            errors += e;
            if first_error.is_none() {
                first_error = f;
            }
        } else {
            errors += 1;
            first_error.get_or_insert_with(|| "a client task panicked".to_string());
        }
    }
    Sample {
        ops: histogram.len(),
        errors,
        first_error,
        seconds: measure.as_secs_f64(),
        histogram,
        cpu: None,
    }
}

/// Wraps an async block as an [`OpFuture`].
pub fn op<F>(future: F) -> OpFuture
where
    F: Future<Output = anyhow::Result<Option<Duration>>> + Send + 'static,
{
    Box::pin(future)
}
