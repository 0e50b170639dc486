//! `jitgate doctor --json`: the checks of a host and what each found.

use serde::{Deserialize, Serialize};

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Ok,
    /// Works now, needs attention soon (a certificate that expires within 30 days, little disk).
    Warn,
    /// Does not work; `fix` says what to do.
    Fail,
}

/// One check: its name (`kernel`, `nftables`, `table`, `database`, `audit`, `tls`, …), what it
/// found, and for a warning or failure what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOut {
    pub name: String,
    pub status: CheckStatus,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// Numbers a script may want without parsing `detail` (element counts, days left, bytes
    /// free, seconds of clock offset, the audit chain's head).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub facts: serde_json::Map<String, serde_json::Value>,
}

/// Every check that ran; `ok` is true when none failed (warnings allowed), as the exit code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorOut {
    pub ok: bool,
    pub checks: Vec<CheckOut>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_plain_json() {
        let mut facts = serde_json::Map::new();
        facts.insert("elements".into(), 3.into());
        let out = DoctorOut {
            ok: false,
            checks: vec![
                CheckOut {
                    name: "table".into(),
                    status: CheckStatus::Ok,
                    detail: "3 elements".into(),
                    fix: None,
                    facts,
                },
                CheckOut {
                    name: "kernel".into(),
                    status: CheckStatus::Fail,
                    detail: "Linux 5.10".into(),
                    fix: Some("upgrade".into()),
                    facts: serde_json::Map::new(),
                },
            ],
        };
        let text = serde_json::to_string(&out).unwrap();
        assert_eq!(
            text,
            r#"{"ok":false,"checks":[{"name":"table","status":"ok","detail":"3 elements","facts":{"elements":3}},{"name":"kernel","status":"fail","detail":"Linux 5.10","fix":"upgrade"}]}"#
        );
        assert_eq!(serde_json::from_str::<DoctorOut>(&text).unwrap(), out);
    }
}
