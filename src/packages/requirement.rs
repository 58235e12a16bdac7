//! What a `packages` entry may be: a PEP 508 name with optional extras and
//! version specifiers, nothing else. No options (`-e`, `--index-url`), no
//! URLs (`name @ https://…`), no paths, no environment markers: those are
//! how an install command is steered somewhere it should not go. Pure.

/// Packages one call may ask for.
pub const MAX_PACKAGES: usize = 32;
/// The longest entry.
const MAX_REQUIREMENT: usize = 200;

/// Checks every entry; the error names the first bad one and what is accepted.
pub fn validate(packages: &[String]) -> Result<(), String> {
    if packages.len() > MAX_PACKAGES {
        return Err(format!(
            "packages has {} entries; at most {MAX_PACKAGES} per call",
            packages.len()
        ));
    }
    for entry in packages {
        check(entry).map_err(|why| {
            format!(
                "packages: {entry:?} {why}; write a name with optional extras and versions, \
                 like \"scikit-learn\", \"pandas[excel]\" or \"tabulate>=0.9,<1\""
            )
        })?;
    }
    Ok(())
}

fn check(entry: &str) -> Result<(), &'static str> {
    if entry.len() > MAX_REQUIREMENT {
        return Err("is too long");
    }
    let entry = entry.trim();
    let name_end = entry
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .unwrap_or(entry.len());
    let name = &entry[..name_end];
    if !valid_name(name) {
        return Err("does not start with a package name");
    }
    let lower = name.to_ascii_lowercase();
    if [".whl", ".zip", ".tar.gz", ".tgz", ".tar.bz2", ".egg"]
        .iter()
        .any(|suffix| lower.ends_with(suffix))
    {
        return Err("names a file; only names and versions are installed (from the index)");
    }
    let mut rest = entry[name_end..].trim_start();
    if let Some(after) = rest.strip_prefix('[') {
        let (extras, after) = after.split_once(']').ok_or("has an unclosed [")?;
        if !extras.split(',').all(|extra| valid_name(extra.trim())) {
            return Err("has an extra that is not a name");
        }
        rest = after.trim_start();
    }
    if rest.is_empty() {
        return Ok(());
    }
    if rest.starts_with('@') {
        return Err("names a URL; only names and versions are installed (from the index)");
    }
    if rest.contains(';') {
        return Err("has an environment marker; the sandbox has one environment");
    }
    for clause in rest.split(',') {
        let clause = clause.trim();
        let operator = ["===", "~=", "==", "!=", "<=", ">=", "<", ">"]
            .into_iter()
            .find(|op| clause.starts_with(op))
            .ok_or("has a version without an operator (==, >=, <, ~=, …)")?;
        let version = clause[operator.len()..].trim();
        let valid = !version.is_empty()
            && version.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '*' | '+' | '!' | '_' | '-')
            });
        if !valid {
            return Err("has a version that is not one");
        }
    }
    Ok(())
}

/// A PEP 508 name: letters, digits, `.`, `_`, `-`, starting and ending with
/// a letter or digit.
fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A project name as indexes compare it (PEP 503): lower case, runs of
/// `-`, `_` and `.` as one `-`; `None` when it is not a name.
pub fn normalized(name: &str) -> Option<String> {
    if !valid_name(name) {
        return None;
    }
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    Some(out)
}

/// The project a valid entry names (normalized) and the version it pins,
/// when its only clause is `==VERSION` (no wildcard).
pub fn project_and_pin(entry: &str) -> Option<(String, Option<String>)> {
    let entry = entry.trim();
    let name_end = entry
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .unwrap_or(entry.len());
    let project = normalized(&entry[..name_end])?;
    let mut rest = entry[name_end..].trim_start();
    if let Some((_, after)) = rest.split_once(']').filter(|_| rest.starts_with('[')) {
        rest = after.trim_start();
    }
    let pin = rest
        .strip_prefix("==")
        .map(str::trim)
        .filter(|version| !version.is_empty() && !version.contains([',', '*', '=']))
        .map(str::to_ascii_lowercase);
    Some((project, pin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_name_their_project_and_pin() {
        let pair = |entry| project_and_pin(entry).unwrap();
        assert_eq!(pair("Scikit_Learn"), ("scikit-learn".into(), None));
        assert_eq!(
            pair("tabulate == 0.9.0"),
            ("tabulate".into(), Some("0.9.0".into()))
        );
        assert_eq!(
            pair("pandas[excel]==2.2RC1"),
            ("pandas".into(), Some("2.2rc1".into()))
        );
        for unpinned in ["six>=1", "six==1.*", "six==1,!=1.2", "six===1"] {
            assert_eq!(pair(unpinned).1, None, "{unpinned}");
        }
    }

    fn ok(entry: &str) -> bool {
        validate(&[entry.to_owned()]).is_ok()
    }

    #[test]
    fn names_extras_and_versions_pass() {
        for entry in [
            "scikit-learn",
            "tabulate==0.9.0",
            "pandas[excel,performance]",
            "numpy>=1.26,<3",
            "requests ~= 2.31",
            "zope.interface",
            "pkg===1.0+local",
            "six!=1.15.*",
        ] {
            assert!(ok(entry), "{entry}");
        }
    }

    #[test]
    fn options_urls_paths_and_markers_are_refused() {
        for entry in [
            "",
            "-e .",
            "--index-url=https://evil.example/simple",
            "--extra-index-url https://evil.example",
            "pkg @ https://evil.example/pkg.whl",
            "./local/path",
            "/abs/path.whl",
            "pkg; python_version < '3.8'",
            "pkg==1.0 --hash=sha256:00",
            "pkg 1.0",
            "pkg[bad extra]",
            "pkg[x",
            "pkg==",
            "pkg==$(id)",
            "-r requirements.txt",
            "evil.whl",
            "pkg-1.0.tar.gz",
            "Thing.ZIP",
        ] {
            assert!(!ok(entry), "{entry:?} passed");
        }
        let error = validate(&["-e .".into()]).unwrap_err();
        assert!(
            error.contains("\"-e .\"") && error.contains("scikit-learn"),
            "{error}"
        );
        let many = vec!["six".to_owned(); MAX_PACKAGES + 1];
        assert!(validate(&many).unwrap_err().contains("at most 32"));
    }

    #[test]
    fn names_normalize_as_indexes_compare_them() {
        assert_eq!(normalized("Scikit_Learn").as_deref(), Some("scikit-learn"));
        assert_eq!(
            normalized("zope..interface").as_deref(),
            Some("zope-interface")
        );
        assert_eq!(normalized("../etc"), None);
        assert_eq!(normalized("a/b"), None);
    }
}
