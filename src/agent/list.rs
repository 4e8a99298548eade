//! The prepull list: the images every node keeps warm, as YAML (a ConfigMap key, mounted).
//!
//! ```yaml
//! # Pinned unless said otherwise: the kubelet's image GC leaves them alone.
//! pin: true
//! images:
//!   - registry.example.com/team/app:1.4
//!   - image: registry.example.com/team/batch:2.0
//!     pin: false
//!   # The tag must resolve to this digest (its index's, or the node's platform manifest's):
//!   # anything else is refused and reported, and the node keeps what it holds.
//!   - image: registry.example.com/team/api:3.1
//!     expect: sha256:0b3a…
//! ```
//!
//! Every problem is reported with the file and the entry (`images[2]`), and a list with any
//! problem is refused whole, so a typo never unpins or drops what the last good list held.
//!
//! Whoever writes the ConfigMap writes what every node parses, so a list is bounded before it
//! is parsed: at most [`MAX_LIST_BYTES`] (a ConfigMap's own limit) and [`MAX_NESTING`] levels
//! deep (a list needs four; YAML nested thousands deep costs its parser quadratic time). The
//! agent parses it on a blocking thread ([`List::load_blocking`]), off its async loop.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use crate::digest::Digest;
use crate::reference::{Reference, Target};

/// One image of the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The image, normalized as the kubelet normalizes it.
    pub reference: Reference,
    /// Whether its records carry the CRI pin.
    pub pin: bool,
    /// The digest its tag must resolve to (`expect:`): the top document's (an index's) or the
    /// node's platform manifest's.
    pub expect: Option<Digest>,
}

/// A parsed list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct List {
    /// The images, in file order, each once.
    pub entries: Vec<Entry>,
}

/// Why a list cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// Unreadable.
    #[error("cannot read the prepull list {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Wrong content: every problem found, one per line.
    #[error("prepull list {}: {}", path.display(), problems.join("; "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Each problem, naming the entry and the fix.
        problems: Vec<String>,
    },
}

/// The largest list read: a ConfigMap holds at most 1 MiB.
pub const MAX_LIST_BYTES: u64 = 1 << 20;
/// The deepest nesting a list may have (as [`nesting_depth`] counts it); a list needs four.
pub const MAX_NESTING: usize = 32;

impl List {
    /// Reads and checks a list file. Reads at most [`MAX_LIST_BYTES`] (and one more to know).
    pub fn load(path: &Path) -> Result<List, ListError> {
        use std::io::Read as _;
        let io = |source| ListError::Io {
            path: path.to_path_buf(),
            source,
        };
        let invalid = |problems| ListError::Invalid {
            path: path.to_path_buf(),
            problems,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(io)?
            .take(MAX_LIST_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_LIST_BYTES {
            return Err(invalid(vec![format!(
                "larger than {MAX_LIST_BYTES} bytes (a ConfigMap's limit); list fewer images"
            )]));
        }
        List::parse(&text).map_err(invalid)
    }

    /// [`List::load`] on a blocking thread, so a large list never stalls the async workers.
    pub async fn load_blocking(path: &Path) -> Result<List, ListError> {
        let owned = path.to_path_buf();
        match tokio::task::spawn_blocking(move || List::load(&owned)).await {
            Ok(loaded) => loaded,
            Err(e) => Err(ListError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// Parses list text; on failure, every problem found.
    pub fn parse(text: &str) -> Result<List, Vec<String>> {
        if nesting_depth(text) > MAX_NESTING {
            return Err(vec![format!(
                "nested more than {MAX_NESTING} levels deep; a list is a mapping with an \
                 `images:` list of names or `image:`/`pin:` mappings"
            )]);
        }
        // Nothing at all is refused: an empty ConfigMap value is a templating or
        // `--from-file` accident far more often than a wish to drop every image (and every pin).
        const SAY_EMPTY: &str = "write `images: []` to keep no images on purpose";
        let top: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| vec![format!("not valid YAML: {e}")])?
        };
        let map = match top {
            Value::Null => {
                return Err(vec![format!(
                    "the list is empty (no `images:`); {SAY_EMPTY}"
                )])
            }
            Value::Mapping(m) => m,
            Value::Sequence(_) => {
                return Err(vec![
                    "the top level is a list; put it under `images:`".to_string()
                ])
            }
            _ => return Err(vec!["expected a mapping with an `images:` list".to_string()]),
        };
        let mut problems = Vec::new();
        let mut default_pin = true;
        let mut images: Option<Vec<Value>> = None;
        for (key, value) in map {
            match key.as_str() {
                Some("pin") => match value {
                    Value::Bool(b) => default_pin = b,
                    other => {
                        problems.push(format!("`pin` must be true or false, not {}", show(&other)))
                    }
                },
                Some("images") => match value {
                    Value::Sequence(s) => images = Some(s),
                    Value::Null => {
                        problems.push(format!("`images:` has nothing under it; {SAY_EMPTY}"))
                    }
                    other => problems.push(format!(
                        "`images` must be a list of image names, not {}",
                        show(&other)
                    )),
                },
                _ => problems.push(format!(
                    "unknown key {}: the list has `images` and `pin`",
                    show(&key)
                )),
            }
        }
        let images = match images {
            Some(images) => images,
            None if problems.is_empty() => {
                return Err(vec![format!("the list has no `images:` key; {SAY_EMPTY}")])
            }
            None => Vec::new(),
        };
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        for (i, item) in images.into_iter().enumerate() {
            let at = format!("images[{i}]");
            let (name, pin, expect) = match item {
                Value::String(s) => (s, default_pin, None),
                Value::Mapping(m) => {
                    let mut name = None;
                    let mut pin = default_pin;
                    let mut expect = None;
                    for (key, value) in m {
                        match (key.as_str(), value) {
                            (Some("image"), Value::String(s)) => name = Some(s),
                            (Some("pin"), Value::Bool(b)) => pin = b,
                            (Some("expect"), Value::String(s)) => match s.parse::<Digest>() {
                                Ok(d) => expect = Some(d),
                                Err(e) => problems.push(format!(
                                    "{at}: `expect` must be the digest the tag resolves to \
                                     (sha256:<64 hex digits>): {e}"
                                )),
                            },
                            (Some("expect"), other) => problems.push(format!(
                                "{at}: `expect` must be a digest (sha256:…), not {}",
                                show(&other)
                            )),
                            (Some("pin"), other) => problems.push(format!(
                                "{at}: `pin` must be true or false, not {}",
                                show(&other)
                            )),
                            (Some("image"), other) => problems.push(format!(
                                "{at}: `image` must be an image name, not {}",
                                show(&other)
                            )),
                            (_, _) => problems.push(format!(
                                "{at}: unknown key {}: an entry has `image`, `pin` and `expect`",
                                show(&key)
                            )),
                        }
                    }
                    match name {
                        Some(n) => (n, pin, expect),
                        None => {
                            problems.push(format!("{at}: has no `image`"));
                            continue;
                        }
                    }
                }
                other => {
                    problems.push(format!(
                        "{at}: expected an image name or a mapping with `image`, not {}",
                        show(&other)
                    ));
                    continue;
                }
            };
            match Reference::parse(&name) {
                Ok(reference) => {
                    if let (Some(_), Target::Digest(d)) = (&expect, reference.target()) {
                        problems.push(format!(
                            "{at}: `expect` is for tags, and {name:?} already names its digest \
                             {d}; drop one of them"
                        ));
                    } else if seen.insert(reference.to_string()) {
                        entries.push(Entry {
                            reference,
                            pin,
                            expect,
                        });
                    } else {
                        problems.push(format!(
                            "{at}: {name:?} is listed twice (as {reference}); keep one"
                        ));
                    }
                }
                Err(e) => problems.push(format!("{at}: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(List { entries })
        } else {
            Err(problems)
        }
    }
}

/// How deep `text` may nest, over-estimated in one pass without parsing: the indentation
/// levels open, plus each `- `, `? ` and `: ` indicator on the line, plus the flow brackets
/// (`[`, `{`) open. Stops counting past [`MAX_NESTING`].
///
/// Lines end where YAML's do (`\n`, `\r`, NEL, LS, PS). Whether a character is inside a quoted
/// scalar or a comment is not always clear without parsing (a quote inside a plain scalar such
/// as `it's` is a character like any other; a quoted scalar may go on over lines), so every
/// reading that may be the parser's is followed at once ([`Readings`]). Whatever opens nesting
/// counts unless every reading is in a comment; a closing bracket and a lower indentation only
/// count where every reading is outside quotes and comments. So the count is never below what
/// the parser nests, whatever the text hides in quotes and comments.
pub(crate) fn nesting_depth(text: &str) -> usize {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut deepest = 0usize;
    let mut readings = Readings::PLAIN;
    for line in text.split(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']) {
        let trimmed = line.trim_start_matches(' ');
        let plain = readings == Readings::PLAIN;
        if trimmed.is_empty() || (plain && trimmed.starts_with('#')) {
            readings.end_line();
            continue;
        }
        let indent = line.len() - trimmed.len();
        if plain && flow == 0 {
            while indents.last().is_some_and(|&i| i >= indent) {
                indents.pop();
            }
        }
        // In a flow collection or a quoted scalar a line may be indented less than its parent:
        // a lower indentation there closes nothing.
        if indents.last().is_none_or(|&i| i < indent) {
            indents.push(indent);
        }
        let mut on_line = 0usize;
        let mut previous: Option<char> = None;
        let mut chars = trimmed.chars().peekable();
        while let Some(c) = chars.next() {
            let next_is_blank = chars.peek().is_none_or(|n| matches!(n, ' ' | '\t'));
            if !readings.all_in_comment() {
                match c {
                    '[' | '{' => flow += 1,
                    ']' | '}' if readings == Readings::PLAIN => flow = flow.saturating_sub(1),
                    '-' | '?' | ':' if next_is_blank => on_line += 1,
                    _ => {}
                }
            }
            readings.step(c, previous);
            previous = Some(c);
            deepest = deepest.max(indents.len() + on_line + flow);
            if deepest > MAX_NESTING {
                return deepest;
            }
        }
        readings.end_line();
    }
    deepest
}

/// The readings a character of the list may have, as the parser may read it: a set of
/// [`Readings::OUTSIDE`], [`Readings::COMMENT`], [`Readings::SINGLE`]…
#[derive(Clone, Copy, PartialEq, Eq)]
struct Readings(u8);

impl Readings {
    /// Outside quotes and comments.
    const OUTSIDE: u8 = 1;
    /// In a comment, to the end of the line.
    const COMMENT: u8 = 2;
    /// In a single-quoted scalar.
    const SINGLE: u8 = 4;
    /// In a double-quoted scalar.
    const DOUBLE: u8 = 8;
    /// In a double-quoted scalar, just after a backslash.
    const ESCAPED: u8 = 16;

    /// Outside, and only outside.
    const PLAIN: Readings = Readings(Readings::OUTSIDE);

    fn all_in_comment(self) -> bool {
        self.0 == Readings::COMMENT
    }

    /// The readings after `c`, `previous` being the character before it on the line (`None`
    /// at its start, after the indentation).
    fn step(&mut self, c: char, previous: Option<char>) {
        // After a blank (or at the start of a line) a `#` is a comment and a quote may open a
        // scalar (or be part of a plain scalar going on from the line before). After an
        // indicator, a bracket or a quote, the parser may be at a token's start; after a
        // word's character, a quote or `#` is part of the word (`it's`).
        let blank = previous.is_none_or(|p| matches!(p, ' ' | '\t'));
        let boundary = blank
            || previous
                .is_some_and(|p| matches!(p, '[' | '{' | ',' | ':' | ']' | '}' | '"' | '\''));
        let mut next = 0;
        if self.0 & Readings::OUTSIDE != 0 {
            next |= match c {
                '#' if blank => Readings::COMMENT,
                '#' if boundary => Readings::OUTSIDE | Readings::COMMENT,
                '\'' if boundary => Readings::OUTSIDE | Readings::SINGLE,
                '"' if boundary => Readings::OUTSIDE | Readings::DOUBLE,
                _ => Readings::OUTSIDE,
            };
        }
        if self.0 & Readings::COMMENT != 0 {
            next |= Readings::COMMENT;
        }
        if self.0 & Readings::SINGLE != 0 {
            next |= if c == '\'' {
                Readings::OUTSIDE
            } else {
                Readings::SINGLE
            };
        }
        if self.0 & Readings::DOUBLE != 0 {
            next |= match c {
                '"' => Readings::OUTSIDE,
                '\\' => Readings::ESCAPED,
                _ => Readings::DOUBLE,
            };
        }
        if self.0 & Readings::ESCAPED != 0 {
            next |= Readings::DOUBLE;
        }
        self.0 = next;
    }

    /// The readings on the next line: comments end there, quoted scalars go on.
    fn end_line(&mut self) {
        let mut next = self.0 & (Readings::OUTSIDE | Readings::SINGLE | Readings::DOUBLE);
        if self.0 & Readings::COMMENT != 0 {
            next |= Readings::OUTSIDE;
        }
        if self.0 & Readings::ESCAPED != 0 {
            next |= Readings::DOUBLE;
        }
        self.0 = next;
    }
}

/// A YAML value in a message: short, on one line.
fn show(v: &Value) -> String {
    let text = match v {
        Value::String(s) => format!("{s:?}"),
        other => serde_yaml_ng::to_string(other)
            .unwrap_or_default()
            .trim()
            .replace('\n', " "),
    };
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_mappings_with_a_default_pin() {
        let list = List::parse(
            "pin: true\nimages:\n  - nginx:1.25\n  - image: registry.example.com/team/batch:2.0\n    pin: false\n",
        )
        .unwrap();
        assert_eq!(list.entries.len(), 2);
        assert_eq!(
            list.entries[0].reference.to_string(),
            "docker.io/library/nginx:1.25"
        );
        assert!(list.entries[0].pin);
        assert!(!list.entries[1].pin);

        let unpinned = List::parse("pin: false\nimages: [busybox]").unwrap();
        assert!(!unpinned.entries[0].pin);
    }

    #[test]
    fn an_entry_may_expect_a_digest_for_its_tag() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let list = List::parse(&format!(
            "images:\n  - image: reg.example/app:1.4\n    expect: {digest}\n  - reg.example/b:1\n"
        ))
        .unwrap();
        assert_eq!(list.entries[0].expect, Some(digest.parse().unwrap()));
        assert_eq!(list.entries[1].expect, None);

        for (bad, says) in [
            (
                "expect: sha256:abc",
                "images[0]: `expect` must be the digest",
            ),
            ("expect: 42", "images[0]: `expect` must be a digest"),
            ("expect: md5:0123", "images[0]: `expect` must be the digest"),
        ] {
            let problems = List::parse(&format!(
                "images:\n  - image: reg.example/app:1\n    {bad}\n"
            ))
            .unwrap_err();
            assert!(problems[0].starts_with(says), "{bad}: {problems:?}");
        }
        let by_digest = List::parse(&format!(
            "images:\n  - image: reg.example/app@{digest}\n    expect: {digest}\n"
        ))
        .unwrap_err();
        assert!(
            by_digest[0].contains("`expect` is for tags"),
            "{by_digest:?}"
        );
    }

    #[test]
    fn a_list_without_images_is_refused_unless_it_says_so() {
        for accident in ["", "\n  \n", "# nothing yet\n", "images:\n", "pin: true\n"] {
            let problems = List::parse(accident).unwrap_err();
            assert!(
                problems.iter().any(|p| p.contains("`images: []`")),
                "{accident:?}: {problems:?}"
            );
        }
        assert_eq!(List::parse("images: []").unwrap(), List::default());
        assert_eq!(
            List::parse("pin: false\nimages: []  # none on purpose\n").unwrap(),
            List::default()
        );
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        for deep in [
            format!("images: {}{}", "[".repeat(75_000), "]".repeat(75_000)),
            format!("images: {}", "{a: ".repeat(40_000)),
            format!("images:\n{}", "- ".repeat(75_000)),
            (0..200)
                .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
                .collect::<String>(),
        ] {
            let started = std::time::Instant::now();
            let problems = List::parse(&deep).unwrap_err();
            assert!(
                problems[0].contains("nested more than 32 levels"),
                "{problems:?}"
            );
            assert!(
                started.elapsed() < std::time::Duration::from_secs(1),
                "{:?}",
                started.elapsed()
            );
        }
        // Ordinary lists are far from the bound, however written.
        for ordinary in [
            "images:\n  - nginx\n  - image: busybox # [not {flow}\n    pin: false\n",
            "{images: [nginx, {image: \"busybox:1\", pin: false}], pin: true}",
            "images:\n- - nested\n",
        ] {
            assert!(
                nesting_depth(ordinary) <= 8,
                "{ordinary}: {}",
                nesting_depth(ordinary)
            );
        }
    }

    #[test]
    fn nesting_hidden_behind_quotes_comments_or_line_breaks_is_counted() {
        let deep = 75_000;
        let open_close = format!("{}x{}", "[".repeat(deep), "]".repeat(deep));
        for hidden in [
            // A quote inside a plain scalar opens nothing.
            format!("images: [nginx]\nit's: {open_close}\n"),
            format!("images: [nginx]\na\"b: {open_close}\n"),
            // A double-quoted scalar going on over lines, its closing brackets text.
            format!("x: {}", "[[[[[ \"\n]]]]]\", ".repeat(deep / 5)),
            // An escaped quote does not end a double-quoted scalar.
            format!("x: {}", "[[[[[ \"\\\" # ]]]]]\", ".repeat(deep / 5)),
            // A carriage return ends a line as a newline does.
            (0..200)
                .map(|i| format!("{}k{i}:\r", " ".repeat(i)))
                .collect(),
        ] {
            let started = std::time::Instant::now();
            let problems = List::parse(&hidden).unwrap_err();
            assert!(
                problems[0].contains("nested more than 32 levels"),
                "{:?}: {problems:?}",
                &hidden[..60]
            );
            assert!(
                started.elapsed() < std::time::Duration::from_secs(1),
                "{:?}",
                started.elapsed()
            );
        }
        // Quotes, comments and flow mappings of an ordinary list open nothing for good.
        let entries = (0..100)
            .map(|i| format!("  - {{image: \"reg.example/app{i}:1\", pin: false}} # it's [{i}\n"))
            .collect::<String>();
        let list = List::parse(&format!("images:\n{entries}")).unwrap();
        assert_eq!(list.entries.len(), 100);
    }

    #[test]
    fn a_list_larger_than_a_configmap_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.yaml");
        let mut text = String::from("images:\n");
        while text.len() as u64 <= MAX_LIST_BYTES {
            text.push_str("  - registry.example.com/team/app:1\n");
        }
        std::fs::write(&path, text).unwrap();
        let e = List::load(&path).unwrap_err().to_string();
        assert!(e.contains("larger than 1048576 bytes"), "{e}");
    }

    #[test]
    fn every_problem_is_named_with_its_entry() {
        let problems = List::parse(
            "imgs: []\npin: yes-please\nimages:\n  - nginx\n  - \"Bad Name\"\n  - image: 5\n  - tag: x\n  - nginx:latest\n  - image: busybox\n    pinned: true\n",
        )
        .unwrap_err();
        let all = problems.join("\n");
        for expected in [
            "unknown key \"imgs\"",
            "`pin` must be true or false",
            "images[1]:",
            "images[2]: `image` must be an image name",
            "images[3]: unknown key \"tag\"",
            "images[3]: has no `image`",
            "images[4]: \"nginx:latest\" is listed twice",
            "images[5]: unknown key \"pinned\"",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert!(List::parse("- nginx").unwrap_err()[0].contains("under `images:`"));
        assert!(List::parse("images: [unclosed").unwrap_err()[0].contains("not valid YAML"));
    }
}
