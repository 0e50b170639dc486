//! EC2's answers read into a small element tree with quick-xml: element names without their
//! namespace, the text of leaf elements exactly as sent (entities resolved), nothing else.
//! Bounded in size, depth and element count, so a malformed or hostile answer is an error,
//! never a panic or an unbounded allocation.

use quick_xml::events::Event;
use quick_xml::Reader;

/// The largest answer read (bytes). A page of 1,000 instances is a few MiB.
pub(crate) const MAX_ANSWER_BYTES: usize = 16 << 20;
/// The deepest nesting accepted; EC2's answers nest about 8 deep.
const MAX_DEPTH: usize = 32;
/// The most elements accepted in one answer (every list is bounded by this).
const MAX_ELEMENTS: usize = 1 << 20;

/// One element: its local name, the text directly inside it, its child elements.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The text of child `name`; `None` when the child is missing or empty.
    pub fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str()).filter(|t| !t.is_empty())
    }

    /// The `<item>` elements of child `name` (EC2's lists); none when the list is missing.
    pub fn items<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Element> + 'a {
        self.child(name).into_iter().flat_map(|list| list.children.iter().filter(|c| c.name == "item"))
    }
}

/// Parses a whole answer into its root element.
pub(crate) fn parse(body: &[u8]) -> Result<Element, String> {
    if body.len() > MAX_ANSWER_BYTES {
        return Err(format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"));
    }
    let text = std::str::from_utf8(body).map_err(|e| format!("the answer is not UTF-8: {e}"))?;
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let event = reader.read_event().map_err(|e| format!("XML error at byte {}: {e}", reader.buffer_position()))?;
        match event {
            Event::Start(_) | Event::Empty(_) if root.is_some() => {
                return Err("content after the root element".into());
            }
            Event::Start(start) => {
                count += 1;
                if count > MAX_ELEMENTS || stack.len() >= MAX_DEPTH {
                    return Err(format!("more than {MAX_ELEMENTS} elements or deeper than {MAX_DEPTH}"));
                }
                stack.push(Element { name: local_name(start.local_name().as_ref())?, ..Element::default() });
            }
            Event::Empty(start) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(format!("more than {MAX_ELEMENTS} elements"));
                }
                let element = Element { name: local_name(start.local_name().as_ref())?, ..Element::default() };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => root = Some(element),
                }
            }
            Event::End(_) => {
                let Some(done) = stack.pop() else { return Err("an end tag without its start".into()) };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => root = Some(done),
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    let unescaped = t.unescape().map_err(|e| format!("bad text in <{}>: {e}", top.name))?;
                    top.text.push_str(&unescaped);
                }
            }
            Event::CData(c) => {
                if let Some(top) = stack.last_mut() {
                    let raw = c.into_inner();
                    let s = std::str::from_utf8(&raw).map_err(|e| format!("bad CDATA: {e}"))?;
                    top.text.push_str(s);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(format!("the answer ends inside <{}>", stack.last().map(|e| e.name.as_str()).unwrap_or("")));
    }
    root.ok_or_else(|| "the answer holds no XML element".into())
}

fn local_name(raw: &[u8]) -> Result<String, String> {
    std::str::from_utf8(raw).map(str::to_owned).map_err(|e| format!("an element name is not UTF-8: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_without_namespace_and_text_exactly() {
        let root = parse(
            br#"<?xml version="1.0" encoding="UTF-8"?>
<R xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><a> x &amp; y </a><l><item><k>1</k></item><item><k>2</k></item><other/></l><e/></R>"#,
        )
        .unwrap();
        assert_eq!(root.name, "R");
        assert_eq!(root.text_of("a"), Some(" x & y "));
        assert_eq!(root.items("l").map(|i| i.text_of("k").unwrap()).collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(root.text_of("e"), None);
        assert_eq!(root.items("missing").count(), 0);
    }

    #[test]
    fn malformed_answers_are_errors() {
        for bad in [&b""[..], b"not xml", b"<a><b></a>", b"<a>", b"<a></a><b></b>", b"<a>&bogus;</a>", b"\xff\xfe"] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert!(parse(deep.as_bytes()).is_err());
    }
}
