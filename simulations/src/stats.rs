//! Percentiles and the report a scenario prints: named figures in a fixed order, as an
//! aligned table for people and as CSV for the sweeps.

/// The `q` quantile (0..=1) of `values` by the nearest-rank method; `None` when empty.
pub fn quantile(values: &[u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// p50, p99 and max of microsecond values, in milliseconds.
pub fn spread_ms(values: &[u64]) -> [Option<f64>; 3] {
    [0.5, 0.99, 1.0].map(|q| quantile(values, q).map(|v| v as f64 / 1000.0))
}

/// Counts of values too many to keep one by one (µs delays of every revision at every
/// agent): exact below 1,024, then within 0.1% (1,024 buckets per power of two).
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

const LINEAR: u64 = 1024;

impl Histogram {
    fn bucket(value: u64) -> usize {
        if value < LINEAR {
            return value as usize;
        }
        let exponent = 63 - value.leading_zeros() as u64; // ≥ 10
        let mantissa = (value >> (exponent - 10)) - LINEAR; // 0..1024
        ((exponent - 9) * LINEAR + mantissa) as usize
    }

    /// The smallest value of a bucket.
    fn floor(bucket: usize) -> u64 {
        let bucket = bucket as u64;
        if bucket < LINEAR {
            return bucket;
        }
        let exponent = bucket / LINEAR + 9;
        (LINEAR + bucket % LINEAR) << (exponent - 10)
    }

    pub fn add(&mut self, value: u64) {
        let bucket = Self::bucket(value);
        if self.counts.len() <= bucket {
            self.counts.resize(bucket + 1, 0);
        }
        self.counts[bucket] += 1;
        self.total += 1;
        self.max = self.max.max(value);
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The `q` quantile by the nearest-rank method, to within 0.1% (the maximum exactly).
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        if rank == self.total {
            return Some(self.max);
        }
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Self::floor(bucket).min(self.max));
            }
        }
        Some(self.max)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub scenario: String,
    /// Figures that depend only on the configuration and the seed.
    pub figures: Vec<(String, String)>,
    /// What the run cost the machine: wall time, memory. Not reproducible.
    pub cost: Vec<(String, String)>,
}

impl Report {
    pub fn new(scenario: &str) -> Self {
        Report {
            scenario: scenario.into(),
            ..Report::default()
        }
    }

    pub fn put(&mut self, name: &str, value: impl std::fmt::Display) {
        self.figures.push((name.into(), value.to_string()));
    }

    pub fn put_ms(&mut self, name: &str, value: Option<f64>) {
        self.put(name, value.map_or("-".into(), |v| format!("{v:.1}")));
    }

    pub fn put_spread(&mut self, name: &str, values: &[u64]) {
        let [p50, p99, max] = spread_ms(values);
        self.put_ms(&format!("{name}_p50_ms"), p50);
        self.put_ms(&format!("{name}_p99_ms"), p99);
        self.put_ms(&format!("{name}_max_ms"), max);
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.figures
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn get_f64(&self, name: &str) -> Option<f64> {
        self.get(name)?.parse().ok()
    }

    /// The figures as an aligned table, then the cost.
    pub fn to_text(&self) -> String {
        let width = self
            .figures
            .iter()
            .chain(&self.cost)
            .map(|(n, _)| n.len())
            .max()
            .unwrap_or(0);
        let mut out = format!("== {}\n", self.scenario);
        for (name, value) in &self.figures {
            out.push_str(&format!("{name:<width$}  {value}\n"));
        }
        for (name, value) in &self.cost {
            out.push_str(&format!("{name:<width$}  {value}  (this machine)\n"));
        }
        out
    }

    pub fn csv_header(&self) -> String {
        let mut names = vec!["scenario".to_string()];
        names.extend(self.figures.iter().map(|(n, _)| n.clone()));
        names.extend(self.cost.iter().map(|(n, _)| n.clone()));
        names.join(",")
    }

    pub fn csv_row(&self) -> String {
        let mut values = vec![self.scenario.clone()];
        values.extend(self.figures.iter().map(|(_, v)| v.clone()));
        values.extend(self.cost.iter().map(|(_, v)| v.clone()));
        values.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&values, 0.5), Some(50));
        assert_eq!(quantile(&values, 0.99), Some(99));
        assert_eq!(quantile(&values, 1.0), Some(100));
        assert_eq!(quantile(&[7], 0.5), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
    }

    /// The histogram's quantiles match the exact ones within 0.1%.
    #[test]
    fn histogram_quantiles_are_within_a_thousandth() {
        let values: Vec<u64> = (0..200_000u64).map(|i| (i * 7_919) % 3_000_017).collect();
        let mut histogram = Histogram::default();
        for v in &values {
            histogram.add(*v);
        }
        assert_eq!(histogram.len(), values.len() as u64);
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let exact = quantile(&values, q).unwrap();
            let approx = histogram.quantile(q).unwrap();
            assert!(approx <= exact, "q {q}: {approx} > {exact}");
            assert!(
                (exact - approx) as f64 <= exact as f64 / 1000.0,
                "q {q}: {approx} against {exact}"
            );
        }
        assert_eq!(Histogram::default().quantile(0.5), None);
    }
}
