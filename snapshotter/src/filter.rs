//! Walk's filters in containerd's syntax, for the fields a snapshot has: `name`, `parent`,
//! `kind` (`view`, `active`, `committed`) and `labels.KEY` (`labels."a.b"` for keys with
//! dots). `FIELD==VALUE`, `FIELD!=VALUE`, or `FIELD` alone (it is set); `,` joins conditions
//! that must all hold; several filters match a snapshot when any one of them does. Regular
//! expressions (`~=`) are refused with a message rather than matched wrongly.

use crate::error::{Error, Result};
use crate::store::{Kind, Record};

#[derive(Debug, Clone, PartialEq)]
enum Field {
    Name,
    Parent,
    Kind,
    Label(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Present,
    Eq(String),
    Ne(String),
}

/// Parsed Walk filters; empty matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filters(Vec<Vec<(Field, Op)>>);

fn bad(filter: &str, why: &str) -> Error {
    Error::InvalidArgument(format!(
        "filter {filter:?}: {why}; write e.g. name==foo,labels.\"a.b\"==x,kind==committed"
    ))
}

/// Reads a field path component: a bare word or a double-quoted string.
fn component(s: &str, filter: &str) -> Result<(String, usize)> {
    if let Some(rest) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, n)) => out.push(n),
                    None => return Err(bad(filter, "unterminated quote")),
                },
                '"' => return Ok((out, i + 2)),
                c => out.push(c),
            }
        }
        Err(bad(filter, "unterminated quote"))
    } else {
        let end = s.find(['.', '=', '!', '~', ',']).unwrap_or(s.len());
        if end == 0 {
            return Err(bad(filter, "a field name is missing"));
        }
        Ok((s[..end].trim().to_string(), end))
    }
}

fn value(s: &str, filter: &str) -> Result<(String, usize)> {
    if s.starts_with('"') {
        component(s, filter)
    } else {
        let end = s.find(',').unwrap_or(s.len());
        Ok((s[..end].trim().to_string(), end))
    }
}

fn parse_one(filter: &str) -> Result<Vec<(Field, Op)>> {
    let mut out = Vec::new();
    let mut s = filter.trim_start();
    while !s.is_empty() {
        let (first, n) = component(s, filter)?;
        s = &s[n..];
        let field = match first.as_str() {
            "name" => Field::Name,
            "parent" => Field::Parent,
            "kind" => Field::Kind,
            "labels" => {
                let rest = s
                    .strip_prefix('.')
                    .ok_or_else(|| bad(filter, "labels needs a key: labels.KEY"))?;
                let (key, n) = component(rest, filter)?;
                s = &rest[n..];
                Field::Label(key)
            }
            other => {
                return Err(bad(
                    filter,
                    &format!("unknown field {other:?} (name, parent, kind, labels.KEY)"),
                ))
            }
        };
        s = s.trim_start();
        let op = if let Some(rest) = s.strip_prefix("==") {
            let (v, n) = value(rest, filter)?;
            s = &rest[n..];
            Op::Eq(v)
        } else if let Some(rest) = s.strip_prefix("!=") {
            let (v, n) = value(rest, filter)?;
            s = &rest[n..];
            Op::Ne(v)
        } else if s.starts_with("~=") {
            return Err(bad(
                filter,
                "regular expressions (~=) are not supported by unionfs-snapshotter; use == or !=",
            ));
        } else {
            Op::Present
        };
        out.push((field, op));
        s = s.trim_start();
        match s.strip_prefix(',') {
            Some(rest) => s = rest.trim_start(),
            None if s.is_empty() => {}
            None => return Err(bad(filter, &format!("unexpected {s:?}"))),
        }
    }
    Ok(out)
}

impl Filters {
    /// Parses Walk's filter strings.
    pub fn parse(filters: &[String]) -> Result<Filters> {
        let mut all = Vec::new();
        for f in filters.iter().filter(|f| !f.trim().is_empty()) {
            all.push(parse_one(f)?);
        }
        Ok(Filters(all))
    }

    /// Whether snapshot `name` with record `rec` passes.
    pub fn matches(&self, name: &str, rec: &Record) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let kind = match rec.kind {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        };
        self.0.iter().any(|all| {
            all.iter().all(|(field, op)| {
                let v: Option<&str> = match field {
                    Field::Name => Some(name),
                    Field::Parent => Some(rec.parent.as_str()).filter(|p| !p.is_empty()),
                    Field::Kind => Some(kind),
                    Field::Label(k) => rec.labels.get(k).map(String::as_str),
                };
                match op {
                    Op::Present => v.is_some(),
                    Op::Eq(want) => v == Some(want.as_str()),
                    Op::Ne(want) => v != Some(want.as_str()),
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn rec(kind: Kind, parent: &str, labels: &[(&str, &str)]) -> Record {
        Record {
            id: 1,
            kind,
            parent: parent.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
            usage: None,
        }
    }

    fn f(s: &[&str]) -> Filters {
        Filters::parse(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn fields_operators_and_or() {
        let r = rec(Kind::Committed, "p", &[("a.b", "x"), ("c", "y")]);
        assert!(f(&[]).matches("n", &r));
        assert!(f(&["name==n"]).matches("n", &r));
        assert!(!f(&["name==m"]).matches("n", &r));
        assert!(f(&["kind==committed,parent==p"]).matches("n", &r));
        assert!(!f(&["kind==active,parent==p"]).matches("n", &r));
        assert!(f(&["kind==active", "parent==p"]).matches("n", &r));
        assert!(f(&["labels.\"a.b\"==x"]).matches("n", &r));
        assert!(f(&["labels.c"]).matches("n", &r));
        assert!(!f(&["labels.d"]).matches("n", &r));
        assert!(f(&["labels.c!=z"]).matches("n", &r));
        assert!(f(&["name==\"n\""]).matches("n", &r));
        assert!(!f(&["parent"]).matches("n", &rec(Kind::Active, "", &[])));
    }

    #[test]
    fn malformed_and_unsupported_filters_are_invalid_arguments() {
        for bad in [
            "size==1",
            "labels",
            "labels.\"a",
            "name~=x",
            "name==a,,kind",
        ] {
            let e = Filters::parse(&[bad.to_string()]).unwrap_err();
            assert_eq!(
                e.code(),
                containerd_snapshots::tonic::Code::InvalidArgument,
                "{bad}"
            );
        }
    }
}
