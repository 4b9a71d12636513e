//! Collects the repetitions of every measurement and prints them as a table of
//! medians with min and max, the mqttlink/rumqttc ratios and the goal checks.

use std::fmt::Write as _;

use crate::measure::Summary;

/// The two clients under test, in the order each repetition runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Library {
    Mqttlink,
    Rumqttc,
}

impl Library {
    /// Both libraries in the order a repetition runs them.
    pub const BOTH: [Self; 2] = [Self::Mqttlink, Self::Rumqttc];

    pub fn name(self) -> &'static str {
        match self {
            Self::Mqttlink => "mqttlink",
            Self::Rumqttc => "rumqttc",
        }
    }
}

/// Direction in which a metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// Target of a metric: a bound on the ratio mqttlink/rumqttc or on mqttlink's value.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// The ratio mqttlink/rumqttc is at least this.
    RatioAtLeast(f64),
    /// The ratio mqttlink/rumqttc is at most this.
    RatioAtMost(f64),
    /// mqttlink's median is at most this.
    ValueAtMost(f64),
}

/// One metric of one workload with the values of every repetition.
#[derive(Debug, Clone)]
pub struct Row {
    pub workload: String,
    pub metric: &'static str,
    pub better: Better,
    pub goal: Option<Goal>,
    mqttlink: Vec<f64>,
    rumqttc: Vec<f64>,
}

impl Row {
    pub fn summary(&self, library: Library) -> Option<Summary> {
        Summary::of(self.values(library))
    }

    fn values(&self, library: Library) -> &[f64] {
        match library {
            Library::Mqttlink => &self.mqttlink,
            Library::Rumqttc => &self.rumqttc,
        }
    }

    /// Median of mqttlink divided by median of rumqttc.
    pub fn ratio(&self) -> Option<f64> {
        let mqttlink = self.summary(Library::Mqttlink)?.median;
        let rumqttc = self.summary(Library::Rumqttc)?.median;
        (rumqttc != 0.0).then(|| mqttlink / rumqttc)
    }

    /// `Some(true)` when the goal is met, `None` when there is no goal or too
    /// few values to judge it.
    pub fn goal_met(&self) -> Option<bool> {
        match self.goal? {
            Goal::RatioAtLeast(minimum) => Some(self.ratio()? >= minimum),
            Goal::RatioAtMost(maximum) => Some(self.ratio()? <= maximum),
            Goal::ValueAtMost(maximum) => Some(self.summary(Library::Mqttlink)?.median <= maximum),
        }
    }
}

/// Every measurement of one benchmark invocation.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    /// Lines printed after the table: leak checks, lost messages.
    pub notes: Vec<String>,
}

impl Report {
    /// Adds one repetition's `value` of `metric` in `workload` for `library`.
    pub fn record(
        &mut self,
        workload: &str,
        metric: &'static str,
        better: Better,
        goal: Option<Goal>,
        library: Library,
        value: f64,
    ) {
        let existing = self
            .rows
            .iter()
            .position(|row| row.workload == workload && row.metric == metric);
        let index = existing.unwrap_or_else(|| {
            self.rows.push(Row {
                workload: workload.to_owned(),
                metric,
                better,
                goal,
                mqttlink: Vec::new(),
                rumqttc: Vec::new(),
            });
            self.rows.len() - 1
        });
        if let Some(row) = self.rows.get_mut(index) {
            match library {
                Library::Mqttlink => row.mqttlink.push(value),
                Library::Rumqttc => row.rumqttc.push(value),
            }
        }
    }

    /// Renders the table, one ratio line per row, the goal checks and the notes.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "{:<22} {:<14} {:<7} {:>34} {:>34} {:>7}",
            "workload",
            "metric",
            "better",
            "mqttlink median [min .. max]",
            "rumqttc median [min .. max]",
            "ratio"
        );
        for row in &self.rows {
            let _ = writeln!(
                text,
                "{:<22} {:<14} {:<7} {:>34} {:>34} {:>7}",
                row.workload,
                row.metric,
                better_word(row.better),
                format_summary(row.summary(Library::Mqttlink)),
                format_summary(row.summary(Library::Rumqttc)),
                row.ratio()
                    .map_or_else(|| "-".to_owned(), |ratio| format!("{ratio:.2}")),
            );
        }

        text.push('\n');
        for row in &self.rows {
            if let Some(ratio) = row.ratio() {
                let _ = writeln!(
                    text,
                    "{} {}: ratio mqttlink/rumqttc = {ratio:.2} ({} is better){}",
                    row.workload,
                    row.metric,
                    better_word(row.better),
                    goal_text(row),
                );
            }
        }
        for note in &self.notes {
            let _ = writeln!(text, "{note}");
        }
        text
    }

    /// Rows of `metric` whose workload passes `include`, in recording order.
    pub fn rows_of<'a>(
        &'a self,
        metric: &'a str,
        include: impl Fn(&str) -> bool + 'a,
    ) -> impl Iterator<Item = &'a Row> + 'a {
        self.rows
            .iter()
            .filter(move |row| row.metric == metric && include(&row.workload))
    }
}

fn better_word(better: Better) -> &'static str {
    match better {
        Better::Higher => "higher",
        Better::Lower => "lower",
    }
}

fn goal_text(row: &Row) -> String {
    let Some(goal) = row.goal else {
        return String::new();
    };
    let wanted = match goal {
        Goal::RatioAtLeast(minimum) => format!("ratio >= {minimum:.2}"),
        Goal::RatioAtMost(maximum) => format!("ratio <= {maximum:.2}"),
        Goal::ValueAtMost(maximum) => format!("mqttlink <= {}", format_value(maximum)),
    };
    let verdict = match row.goal_met() {
        Some(true) => "met",
        Some(false) => "missed",
        None => "not measured",
    };
    format!("; goal {wanted}: {verdict}")
}

fn format_summary(summary: Option<Summary>) -> String {
    summary.map_or_else(
        || "-".to_owned(),
        |summary| {
            format!(
                "{} [{} .. {}]",
                format_value(summary.median),
                format_value(summary.min),
                format_value(summary.max)
            )
        },
    )
}

/// Formats with three significant digits for small values and none for large.
pub fn format_value(value: f64) -> String {
    if value == 0.0 {
        "0".to_owned()
    } else if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}
