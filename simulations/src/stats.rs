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
}
