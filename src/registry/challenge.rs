//! Parsing `WWW-Authenticate` headers (RFC 7235): several challenges per header, several
//! headers per response, quoted strings with commas and backslash escapes.

use std::collections::BTreeMap;

/// One authentication challenge, e.g. `Bearer realm="…",service="…",scope="…"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme, lower-cased (`bearer`, `basic`).
    pub scheme: String,
    /// Parameters, keys lower-cased.
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    /// A parameter by (lower-case) name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Parses every challenge in every header value, in order. Malformed trailing parts are
/// skipped rather than failing the whole header: registries in the wild are not always tidy.
pub fn parse<'a>(headers: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    headers.into_iter().flat_map(parse_one).collect()
}

fn parse_one(header: &str) -> Vec<Challenge> {
    let mut p = Parser {
        s: header.as_bytes(),
        i: 0,
    };
    let mut out: Vec<Challenge> = Vec::new();
    loop {
        p.skip(|b| b == b' ' || b == b'\t' || b == b',');
        if p.peek().is_none() {
            break;
        }
        let Some(token) = p.token() else {
            // Not a token (e.g. the padding of a token68 credential): step over it.
            p.i += 1;
            continue;
        };
        let save = p.i;
        p.skip(|b| b == b' ' || b == b'\t');
        if p.peek() == Some(b'=') && !out.is_empty() {
            // `key=value` belonging to the current challenge.
            p.i += 1;
            p.skip(|b| b == b' ' || b == b'\t');
            let value = if p.peek() == Some(b'"') {
                p.quoted()
            } else {
                p.token().unwrap_or_default()
            };
            if let Some(current) = out.last_mut() {
                current.params.insert(token.to_ascii_lowercase(), value);
            }
        } else {
            p.i = save;
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
        }
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip(&mut self, f: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
    }

    /// RFC 7230 `token` characters.
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        self.skip(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&b));
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn quoted(&mut self) -> String {
        let mut out = Vec::new();
        self.i += 1; // opening quote
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    if let Some(n) = self.peek() {
                        out.push(n);
                        self.i += 1;
                    }
                }
                _ => out.push(b),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_bearer() {
        let c = parse([
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        ]);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(c[0].param("scope"), Some("repository:library/nginx:pull"));
    }

    #[test]
    fn several_challenges_in_one_header_and_commas_in_quotes() {
        let c = parse([
            r#"Basic realm="a, b", Bearer realm="https://r/t",scope="repository:x:pull,push", error="insufficient_scope""#,
        ]);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some("a, b"));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("scope"), Some("repository:x:pull,push"));
        assert_eq!(c[1].param("error"), Some("insufficient_scope"));
    }

    #[test]
    fn several_headers_escapes_and_case() {
        let c = parse([
            r#"BASIC Realm="say \"hi\"""#,
            r#"bearer REALM=https://x/token , Service=reg"#,
        ]);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].param("realm"), Some(r#"say "hi""#));
        assert_eq!(c[1].param("realm"), Some("https://x/token"));
        assert_eq!(c[1].param("service"), Some("reg"));
    }

    #[test]
    fn bare_schemes_and_garbage() {
        let c = parse(["Negotiate, Basic"]);
        assert_eq!(
            c.iter().map(|c| c.scheme.as_str()).collect::<Vec<_>>(),
            ["negotiate", "basic"]
        );
        assert!(parse([""]).is_empty());
        assert!(parse([",,, "]).is_empty());
        // Unterminated quote: take what is there, do not panic.
        let c = parse([r#"Bearer realm="https://x"#]);
        assert_eq!(c[0].param("realm"), Some("https://x"));
    }
}
