//! Annotation templates: `{{ $labels.NAME }}` becomes the alert's label,
//! `{{ $value }}` the value that triggered it. The same subset of Prometheus'
//! template language, so an annotation reads the same in `tally.rules.yml`.

use std::collections::BTreeMap;

enum Part<'a> {
    Text(&'a str),
    Label(&'a str),
    Value,
}

fn parse(text: &str) -> Result<Vec<Part<'_>>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        parts.push(Part::Text(&rest[..open]));
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| format!("\"{{{{\" without \"}}}}\" in \"{text}\""))?;
        let inner = after[..close].trim();
        if inner == "$value" {
            parts.push(Part::Value);
        } else if let Some(label) = inner.strip_prefix("$labels.") {
            parts.push(Part::Label(label));
        } else {
            return Err(format!(
                "\"{{{{ {inner} }}}}\" is not supported: expected {{{{ $labels.NAME }}}} or {{{{ $value }}}}"
            ));
        }
        rest = &after[close + 2..];
    }
    parts.push(Part::Text(rest));
    Ok(parts)
}

/// Checks `text`; `known` says which label names an alert of the rule has.
pub(crate) fn check(text: &str, known: impl Fn(&str) -> bool) -> Result<(), String> {
    for part in parse(text)? {
        if let Part::Label(l) = part
            && !known(l)
        {
            return Err(format!(
                "{{{{ $labels.{l} }}}}: \"{l}\" is not a label of this rule's alerts"
            ));
        }
    }
    Ok(())
}

/// The value as an annotation shows it: whole numbers without a fraction,
/// others with up to three decimals.
pub(crate) fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        let s = format!("{value:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// Substitutes the labels and the value into a checked template.
pub(crate) fn render(text: &str, labels: &BTreeMap<String, String>, value: f64) -> String {
    let Ok(parts) = parse(text) else {
        return text.to_owned();
    };
    let mut out = String::with_capacity(text.len() + 32);
    for part in parts {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Label(l) => out.push_str(labels.get(l).map_or("", String::as_str)),
            Part::Value => out.push_str(&format_value(value)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_labels_and_value() {
        let labels: BTreeMap<String, String> = [("group".into(), "billing".into())].into();
        assert_eq!(
            render(
                "{{ $labels.group }} lags {{$value}} records",
                &labels,
                1234.0
            ),
            "billing lags 1234 records"
        );
        assert_eq!(render("ratio {{ $value }}", &labels, 0.95), "ratio 0.95");
        assert_eq!(render("no template", &labels, 1.0), "no template");
        assert!(check("{{ $labels.group }}", |l| l == "group").is_ok());
        assert!(check("{{ $labels.topic }}", |l| l == "group").is_err());
        assert!(check("{{ .Labels.group }}", |_| true).is_err());
        assert!(check("{{ $value", |_| true).is_err());
    }
}
