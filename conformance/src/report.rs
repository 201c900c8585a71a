//! The conformance report: one [`CheckReport`] per check, written as a table for people
//! ([`Report::to_table`]), JSON ([`Report::to_json`]) or JUnit XML ([`Report::to_junit`]) for CI.
//!
//! JSON schema (stable, additive changes only):
//! ```json
//! {"image": "…", "profile": "direct", "firmware": "bios", "accel": "tcg",
//!  "passed": false, "duration_secs": 81.2,
//!  "counts": {"pass": 7, "fail": 0, "skip": 3},
//!  "checks": [{"name": "cloud-init", "title": "…", "status": "PASS", "reason": null,
//!              "duration_secs": 1.3}]}
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::check::{CheckResult, Status};

/// The result of one check, with its timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    /// The check id.
    pub name: String,
    /// What it proves.
    pub title: String,
    /// PASS, FAIL or SKIP.
    pub status: Status,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
    /// How long it ran, in seconds.
    pub duration_secs: f64,
}

impl CheckReport {
    /// A report line for `result`.
    pub fn new(name: &str, title: &str, result: &CheckResult, took: Duration) -> Self {
        Self {
            name: name.to_owned(),
            title: title.to_owned(),
            status: result.status(),
            reason: result.reason().map(str::to_owned),
            duration_secs: took.as_secs_f64(),
        }
    }
}

/// How many checks ended in each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Passed.
    pub pass: usize,
    /// Failed.
    pub fail: usize,
    /// Skipped.
    pub skip: usize,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The image as given on the command line.
    pub image: String,
    /// `direct` or `cluster`.
    pub profile: String,
    /// The firmware the VM booted with (`bios` or `uefi`).
    pub firmware: String,
    /// The accelerator (`kvm` or `tcg`), empty when no VM ran.
    pub accel: String,
    /// True when no check failed (skips do not make a run fail, and do not count as passes).
    pub passed: bool,
    /// Wall time of the whole run, in seconds.
    pub duration_secs: f64,
    /// Counts per status.
    pub counts: Counts,
    /// One entry per check, in the order they ran.
    pub checks: Vec<CheckReport>,
}

impl Report {
    /// A report from its checks; `passed` and `counts` are computed.
    pub fn new(
        image: impl Into<String>,
        profile: impl Into<String>,
        firmware: impl Into<String>,
        accel: impl Into<String>,
        checks: Vec<CheckReport>,
        took: Duration,
    ) -> Self {
        let mut counts = Counts::default();
        for c in &checks {
            match c.status {
                Status::Pass => counts.pass += 1,
                Status::Fail => counts.fail += 1,
                Status::Skip => counts.skip += 1,
            }
        }
        Self {
            image: image.into(),
            profile: profile.into(),
            firmware: firmware.into(),
            accel: accel.into(),
            passed: counts.fail == 0,
            duration_secs: took.as_secs_f64(),
            counts,
            checks,
        }
    }

    /// The check named `name`.
    pub fn check(&self, name: &str) -> Option<&CheckReport> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// A plain-text table (no colour: the status word carries the meaning).
    pub fn to_table(&self) -> String {
        let name_w = self
            .checks
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(0)
            .max(5);
        let mut out = format!(
            "kib conformance: `{}` (profile {}, firmware {}, accel {})\n\n",
            self.image,
            self.profile,
            self.firmware,
            if self.accel.is_empty() {
                "-"
            } else {
                &self.accel
            }
        );
        out.push_str(&format!(
            "{:<4}  {:<name_w$}  {:>6}  DETAIL\n",
            "", "CHECK", "TIME"
        ));
        for c in &self.checks {
            let detail = match &c.reason {
                Some(r) => format!("{}: {}", c.title, r.replace('\n', " ")),
                None => c.title.clone(),
            };
            out.push_str(&format!(
                "{:<4}  {:<name_w$}  {:>5.1}s  {}\n",
                c.status.to_string(),
                c.name,
                c.duration_secs,
                detail
            ));
        }
        out.push_str(&format!(
            "\n{} passed, {} failed, {} skipped in {:.1}s: {}\n",
            self.counts.pass,
            self.counts.fail,
            self.counts.skip,
            self.duration_secs,
            if self.passed {
                "conformant (skipped checks are not passes)"
            } else {
                "NOT conformant"
            }
        ));
        out
    }

    /// Pretty JSON (the schema is in the module docs).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    /// JUnit XML: one `<testsuite>` named after the profile, one `<testcase>` per check, with
    /// `<failure>` or `<skipped>` carrying the reason.
    pub fn to_junit(&self) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        out.push_str(&format!(
            "<testsuites name=\"kib conformance\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{:.3}\">\n",
            self.checks.len(),
            self.counts.fail,
            self.counts.skip,
            self.duration_secs
        ));
        out.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{:.3}\">\n",
            xml_escape(&format!("conformance.{}", self.profile)),
            self.checks.len(),
            self.counts.fail,
            self.counts.skip,
            self.duration_secs
        ));
        out.push_str("    <properties>\n");
        for (k, v) in [
            ("image", &self.image),
            ("firmware", &self.firmware),
            ("accel", &self.accel),
        ] {
            out.push_str(&format!(
                "      <property name=\"{k}\" value=\"{}\"/>\n",
                xml_escape(v)
            ));
        }
        out.push_str("    </properties>\n");
        for c in &self.checks {
            out.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
                xml_escape(&format!("conformance.{}", self.profile)),
                xml_escape(&c.name),
                c.duration_secs
            ));
            let reason = xml_escape(c.reason.as_deref().unwrap_or(""));
            match c.status {
                Status::Pass => out.push_str("/>\n"),
                Status::Fail => out.push_str(&format!(
                    ">\n      <failure message=\"{reason}\">{}</failure>\n    </testcase>\n",
                    xml_escape(&c.title)
                )),
                Status::Skip => out.push_str(&format!(
                    ">\n      <skipped message=\"{reason}\"/>\n    </testcase>\n"
                )),
            }
        }
        out.push_str("  </testsuite>\n</testsuites>\n");
        out
    }
}

/// Escapes text for XML attributes and content; drops characters XML 1.0 cannot carry.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' | '\r' => out.push(' '),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let checks = vec![
            CheckReport::new(
                "cloud-init",
                "cloud-init finished",
                &CheckResult::Pass,
                Duration::from_millis(1500),
            ),
            CheckReport::new(
                "firewall",
                "only listed ports reachable",
                &CheckResult::fail("port 9 answered <&> \"x\""),
                Duration::from_secs(3),
            ),
            CheckReport::new(
                "versions",
                "versions match",
                &CheckResult::Skip("no kubeadm in this image".into()),
                Duration::ZERO,
            ),
        ];
        Report::new(
            "img.qcow2",
            "direct",
            "bios",
            "tcg",
            checks,
            Duration::from_secs(90),
        )
    }

    #[test]
    fn counts_and_verdict() {
        let r = sample();
        assert_eq!(
            r.counts,
            Counts {
                pass: 1,
                fail: 1,
                skip: 1
            }
        );
        assert!(!r.passed);
        let only_skips = Report::new(
            "i",
            "direct",
            "bios",
            "",
            vec![CheckReport::new(
                "a",
                "a",
                &CheckResult::Skip("x".into()),
                Duration::ZERO,
            )],
            Duration::ZERO,
        );
        assert!(only_skips.passed, "a skip is not a failure");
        assert_eq!(only_skips.counts.pass, 0, "a skip is not a pass");
    }

    #[test]
    fn json_round_trips() {
        let r = sample();
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["checks"][1]["status"], "FAIL");
        assert_eq!(v["checks"][2]["reason"], "no kubeadm in this image");
        assert_eq!(v["checks"][0]["reason"], serde_json::Value::Null);
        assert_eq!(v["firmware"], "bios");
        assert_eq!(v["counts"]["skip"], 1);
        let back: Report = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn table_lists_every_check_with_its_reason() {
        let t = sample().to_table();
        assert!(t.contains("firmware bios"), "{t}");
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("PASS") && l.contains("cloud-init")),
            "{t}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("FAIL") && l.contains("port 9 answered")),
            "{t}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("SKIP") && l.contains("no kubeadm in this image")),
            "{t}"
        );
        assert!(t.contains("1 passed, 1 failed, 1 skipped"), "{t}");
        assert!(t.contains("NOT conformant"), "{t}");
    }

    #[test]
    fn junit_is_well_formed_and_escaped() {
        let x = sample().to_junit();
        assert!(x.starts_with("<?xml"));
        assert!(
            x.contains("tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\""),
            "{x}"
        );
        assert!(
            x.contains(
                "<testcase classname=\"conformance.direct\" name=\"cloud-init\" time=\"1.500\"/>"
            ),
            "{x}"
        );
        assert!(
            x.contains("<failure message=\"port 9 answered &lt;&amp;&gt; &quot;x&quot;\">"),
            "{x}"
        );
        assert!(
            x.contains("<skipped message=\"no kubeadm in this image\"/>"),
            "{x}"
        );
        assert!(
            x.contains("<property name=\"firmware\" value=\"bios\"/>"),
            "{x}"
        );
        // Balanced tags: every opened testcase with a body is closed.
        assert_eq!(x.matches("<testcase").count(), 3);
        assert_eq!(x.matches("</testcase>").count(), 2);
        assert_eq!(
            x.matches("<testsuite ").count(),
            x.matches("</testsuite>").count()
        );
        assert!(!x.contains('\u{1}'));
        assert_eq!(xml_escape("a\u{1}b\nc"), "ab&#10;c");
    }
}
