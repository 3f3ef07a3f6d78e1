//! The plain-text summary of the books and the groups, as `tally demo`
//! prints it: the same numbers the API serves.

use std::fmt::Write as _;

use tally_audit::Snapshot;

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |n| n.to_string())
}

/// Renders the topics and groups of `s` as two aligned tables.
pub(crate) fn render(s: &Snapshot) -> String {
    let mut rows = vec![
        [
            "TOPIC", "TIER", "RECORDS", "COMPLETE", "MISSING", "EXCESS", "PENDING", "EXPIRED",
            "SKIPPED", "BUCKETS",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for t in &s.topics {
        for (tier, b) in &t.tiers {
            let buckets = b
                .buckets
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(st, n)| format!("{st}:{n}"))
                .collect::<Vec<_>>()
                .join(" ");
            rows.push(vec![
                t.topic.clone(),
                tier.clone(),
                b.records.to_string(),
                pct(b.completeness),
                b.missing.to_string(),
                b.excess.to_string(),
                opt(b.pending),
                opt(b.expired),
                opt(b.skipped),
                buckets,
            ]);
        }
    }
    let mut out = table(&rows);
    out.push('\n');
    let mut rows = vec![
        ["GROUP", "STATUS", "LAG", "LAG SECONDS", "PARTITIONS"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for g in &s.groups {
        let parts = g
            .partitions
            .iter()
            .map(|p| format!("{}/{}:{}", p.topic, p.partition, p.status))
            .collect::<Vec<_>>()
            .join(" ");
        rows.push(vec![
            g.group.clone(),
            g.status.to_string(),
            g.lag_records.to_string(),
            format!("{:.1}", g.max_lag_seconds),
            parts,
        ]);
    }
    out.push_str(&table(&rows));
    out
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line = r
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ");
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}
