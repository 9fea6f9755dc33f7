//! The text form of `kv txn`, etcdctl's: compares, a blank line, the operations run when they
//! all hold, a blank line, the operations run otherwise.
//!
//! ```text
//! value("config/mode") = "blue"
//! version("lock") = "0"
//!
//! put config/mode green
//! del lock
//!
//! get config/mode
//! ```
//!
//! A compare is `TARGET("KEY") OP "ARG"` with TARGET `value`, `version` (0: absent), `create`
//! or `mod` (revisions) and OP `=`, `!=`, `>` or `<`. An operation is `put KEY VALUE`, `del KEY`
//! or `get KEY`. Keys and values are words, or quoted strings with `\"` and `\\` escapes. Lines
//! starting with `#` are comments.

use iroh_raft::kv::{Compare, CompareOp, CompareTarget, Txn, TxnOp};

/// Splits a line into words: quoted strings (with `\"` and `\\`) or runs of non-space.
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("a quoted string is not closed".into()),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(e @ ('"' | '\\')) => word.push(e),
                        Some('n') => word.push('\n'),
                        other => return Err(format!("unknown escape \\{}", other.unwrap_or(' '))),
                    },
                    Some(c) => word.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        out.push(word);
    }
    Ok(out)
}

fn compare(line: &str) -> Result<Compare, String> {
    let open = line
        .find('(')
        .ok_or("a compare is TARGET(\"KEY\") OP \"ARG\"")?;
    let close = line
        .rfind(')')
        .ok_or("a compare is TARGET(\"KEY\") OP \"ARG\"")?;
    if close < open {
        return Err("a compare is TARGET(\"KEY\") OP \"ARG\"".into());
    }
    let target = line[..open].trim();
    let key = match words(&line[open + 1..close])?.as_slice() {
        [key] => key.clone(),
        _ => return Err("the compare's key must be one word or quoted string".into()),
    };
    let rest = words(&line[close + 1..])?;
    let [op, arg] = rest.as_slice() else {
        return Err("a compare ends with OP \"ARG\"".into());
    };
    let op = match op.as_str() {
        "=" | "==" => CompareOp::Equal,
        "!=" => CompareOp::NotEqual,
        ">" => CompareOp::Greater,
        "<" => CompareOp::Less,
        other => return Err(format!("unknown operator {other:?} (=, !=, >, <)")),
    };
    let number = |what: &str| {
        arg.parse::<u64>()
            .map_err(|_| format!("{what} compares with a number, not {arg:?}"))
    };
    let target = match target {
        "value" | "val" => CompareTarget::Value(Some(arg.clone())),
        "version" | "ver" => CompareTarget::Version(number("version")?),
        "create" | "create_revision" => CompareTarget::CreateRevision(number("create")?),
        "mod" | "mod_revision" => CompareTarget::ModRevision(number("mod")?),
        other => {
            return Err(format!(
                "unknown compare target {other:?} (value, version, create, mod)"
            ));
        }
    };
    Ok(Compare { key, target, op })
}

fn op(line: &str) -> Result<TxnOp, String> {
    match words(line)?.as_slice() {
        [verb, key, value] if verb == "put" => Ok(TxnOp::Put {
            key: key.clone(),
            value: value.clone(),
        }),
        [verb, key] if verb == "del" || verb == "delete" => Ok(TxnOp::Delete { key: key.clone() }),
        [verb, key] if verb == "get" => Ok(TxnOp::Get { key: key.clone() }),
        _ => Err("an operation is `put KEY VALUE`, `del KEY` or `get KEY`".into()),
    }
}

/// Parses a transaction; an error names the line.
pub(crate) fn parse(text: &str) -> Result<Txn, String> {
    let mut txn = Txn {
        compare: Vec::new(),
        success: Vec::new(),
        failure: Vec::new(),
    };
    let mut section = 0;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        // Each blank line closes a section, even an empty one.
        if line.is_empty() {
            section += 1;
            continue;
        }
        let at = |e: String| format!("line {}: {e}", n + 1);
        match section {
            0 => txn.compare.push(compare(line).map_err(at)?),
            1 => txn.success.push(op(line).map_err(at)?),
            2 => txn.failure.push(op(line).map_err(at)?),
            _ => {
                return Err(at(
                    "a transaction has three sections: compares, then, else".into()
                ));
            }
        }
    }
    Ok(txn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_sections_parse() {
        let text = "value(\"a b\") = \"x \\\"y\\\"\"\nversion(\"lock\") = \"0\"\nmod(k) > 5\n\nput k \"v 1\"\ndel lock\n\nget k\n";
        let txn = parse(text).unwrap();
        assert_eq!(txn.compare.len(), 3);
        assert_eq!(txn.compare[0].key, "a b");
        assert_eq!(
            txn.compare[0].target,
            CompareTarget::Value(Some("x \"y\"".into()))
        );
        assert_eq!(txn.compare[1].target, CompareTarget::Version(0));
        assert_eq!(txn.compare[2].op, CompareOp::Greater);
        assert_eq!(
            txn.success,
            vec![
                TxnOp::Put {
                    key: "k".into(),
                    value: "v 1".into()
                },
                TxnOp::Delete { key: "lock".into() }
            ]
        );
        assert_eq!(txn.failure, vec![TxnOp::Get { key: "k".into() }]);
    }

    #[test]
    fn no_compares_runs_the_success_ops() {
        let txn = parse("\nput a 1\n").unwrap();
        assert!(txn.compare.is_empty());
        assert_eq!(txn.success.len(), 1);
    }

    #[test]
    fn errors_name_the_line() {
        assert!(
            parse("value(\"a\") ~ \"1\"")
                .unwrap_err()
                .starts_with("line 1:")
        );
        assert!(parse("\nput a").unwrap_err().starts_with("line 2:"));
        assert!(parse("version(a) = x").unwrap_err().contains("number"));
        assert!(
            parse("\n\n\n\nget a")
                .unwrap_err()
                .contains("three sections")
        );
        assert!(parse("value(\"a) = \"1\"").is_err());
    }
}
