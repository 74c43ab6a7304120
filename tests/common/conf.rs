//! dhid.conf records, dhis.db records and the QRC test keys.

use super::dhisd::DbHost;

/// Width of one AuthP/AuthQ/AuthN line.
pub const KEY_LINE: usize = 50;

/// The QRC test keys of `tests/data/keys1.json` as decimal strings
/// `(p, q, n)`, with n = p·q.
pub fn qrc_keys() -> (String, String, String) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/keys1.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let get = |key: &str| {
        json_number(&text, key).unwrap_or_else(|| panic!("{path}: no number for \"{key}\""))
    };
    (get("p"), get("q"), get("n"))
}

/// The digits of the JSON number stored under `"key"` in a flat object.
fn json_number(text: &str, key: &str) -> Option<String> {
    let quoted = format!("\"{key}\"");
    let at = text.find(&quoted)? + quoted.len();
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    // Tolerate the number written as a string, too.
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    (!digits.is_empty()).then_some(digits)
}

/// `keyword chunk` lines of at most [`KEY_LINE`] digits each.
pub fn key_lines(keyword: &str, digits: &str) -> Vec<String> {
    assert!(
        digits.bytes().all(|b| b.is_ascii_digit()),
        "{keyword}: not decimal"
    );
    digits
        .as_bytes()
        .chunks(KEY_LINE)
        .map(|c| format!("{keyword} {}", String::from_utf8_lossy(c)))
        .collect()
}

/// A dhid.conf record in password mode talking to 127.0.0.1:`server_port`.
/// `Refresh 60` is added unless `extra` has a `Refresh` line of its own.
pub fn conf_password(hostid: u32, pass: &str, server_port: u16, extra: &[&str]) -> String {
    let auth = vec![format!("HostPass {pass}")];
    record(hostid, &auth, server_port, extra)
}

/// A dhid.conf record in QRC mode (AuthP/AuthQ split in lines of 50
/// digits) talking to 127.0.0.1:`server_port`; `Refresh` as for
/// [`conf_password`].
pub fn conf_qrc(hostid: u32, p: &str, q: &str, server_port: u16, extra: &[&str]) -> String {
    let mut auth = key_lines("AuthP", p);
    auth.extend(key_lines("AuthQ", q));
    record(hostid, &auth, server_port, extra)
}

fn record(hostid: u32, auth: &[String], server_port: u16, extra: &[&str]) -> String {
    let mut s = format!("{{\nHostID {hostid}\n");
    for line in auth {
        s.push_str(line);
        s.push('\n');
    }
    s.push_str(&format!("ISAddr 127.0.0.1:{server_port}\n"));
    let has_refresh = extra.iter().any(|l| {
        let word = l.split_whitespace().next().unwrap_or("");
        word.eq_ignore_ascii_case("refresh")
    });
    if !has_refresh {
        s.push_str("Refresh 60\n");
    }
    for line in extra {
        s.push_str(line);
        s.push('\n');
    }
    s.push_str("}\n");
    s
}

/// dhis.db text for `hosts` (PROTOCOL.md 0.1).
pub fn db_text(hosts: &[DbHost]) -> String {
    let mut s = String::new();
    for h in hosts {
        match h {
            DbHost::Password { hostid, pass } => {
                s.push_str(&format!("{hostid} {{\nHostPass {pass}\n}}\n"));
            }
            DbHost::Qrc { hostid, n } => {
                assert!(
                    n.len() <= 200,
                    "QRC N of host {hostid} has more than 200 digits"
                );
                let padded = format!("{n:0>200}");
                s.push_str(&format!("{hostid} {{\n"));
                for line in key_lines("AuthN", &padded) {
                    s.push_str(&format!("{line}\n"));
                }
                s.push_str("}\n");
            }
        }
    }
    s
}
