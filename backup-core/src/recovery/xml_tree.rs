//! A small owned XML tree for editing libvirt documents: a point's domain
//! XML is read, changed (a new name, new disk paths, no MAC addresses) and
//! written back. Names keep their prefixes and `xmlns` attributes stay
//! attributes, so metadata in other namespaces round-trips as it was.
//! Comments, processing instructions and the declaration are dropped.

use quick_xml::events::Event;

/// An element: its qualified name, attributes in order, and children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

/// A child of an element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    /// An element with no attributes and no children.
    pub fn new(name: &str) -> Element {
        Element { name: name.to_string(), attrs: Vec::new(), children: Vec::new() }
    }

    /// Parses a document; its root element.
    pub fn parse(xml: &str) -> Result<Element, String> {
        let mut reader = quick_xml::Reader::from_str(xml);
        let mut stack: Vec<Element> = Vec::new();
        let mut root = None;
        loop {
            let at = reader.buffer_position();
            let event = reader.read_event().map_err(|e| format!("XML error at byte {at}: {e}"))?;
            match event {
                Event::Start(e) | Event::Empty(e) if root.is_some() => {
                    return Err(format!("a second root element <{}>", String::from_utf8_lossy(e.name().as_ref())));
                }
                Event::Start(e) => stack.push(Self::start(&e)?),
                Event::Empty(e) => {
                    let el = Self::start(&e)?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(Node::Element(el)),
                        None => root = Some(el),
                    }
                }
                Event::End(_) => {
                    let el = stack.pop().ok_or("an end tag without a start")?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(Node::Element(el)),
                        None => root = Some(el),
                    }
                }
                Event::Text(t) => {
                    let text = t.decode().map_err(|e| format!("text at byte {at}: {e}"))?;
                    Self::push_text(&mut stack, &text);
                }
                Event::CData(t) => {
                    let text = t.decode().map_err(|e| format!("CDATA at byte {at}: {e}"))?;
                    Self::push_text(&mut stack, &text);
                }
                Event::GeneralRef(r) => {
                    let text = match r.resolve_char_ref().map_err(|e| format!("reference at byte {at}: {e}"))? {
                        Some(c) => c.to_string(),
                        None => match r.decode().map_err(|e| format!("reference at byte {at}: {e}"))?.as_ref() {
                            "amp" => "&".into(),
                            "lt" => "<".into(),
                            "gt" => ">".into(),
                            "quot" => "\"".into(),
                            "apos" => "'".into(),
                            other => return Err(format!("unknown entity &{other}; at byte {at}")),
                        },
                    };
                    Self::push_text(&mut stack, &text);
                }
                Event::Eof => break,
                Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            }
        }
        if !stack.is_empty() {
            return Err(format!("<{}> is not closed", stack[stack.len() - 1].name));
        }
        root.ok_or_else(|| "no root element".to_string())
    }

    fn start(e: &quick_xml::events::BytesStart<'_>) -> Result<Element, String> {
        let name = String::from_utf8(e.name().as_ref().to_vec()).map_err(|_| "an element name is not UTF-8")?;
        let mut attrs = Vec::new();
        for a in e.attributes() {
            let a = a.map_err(|e| format!("an attribute of <{name}>: {e}"))?;
            let key = String::from_utf8(a.key.as_ref().to_vec()).map_err(|_| "an attribute name is not UTF-8")?;
            let value = a.unescape_value().map_err(|e| format!("attribute {key} of <{name}>: {e}"))?;
            attrs.push((key, value.into_owned()));
        }
        Ok(Element { name, attrs, children: Vec::new() })
    }

    fn push_text(stack: &mut [Element], text: &str) {
        if let Some(parent) = stack.last_mut() {
            match parent.children.last_mut() {
                Some(Node::Text(t)) => t.push_str(text),
                _ => parent.children.push(Node::Text(text.to_string())),
            }
        }
    }

    /// The document as text.
    pub fn to_xml(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out.push('\n');
        out
    }

    fn write(&self, out: &mut String) {
        out.push('<');
        out.push_str(&self.name);
        for (k, v) in &self.attrs {
            out.push(' ');
            out.push_str(k);
            out.push_str("='");
            out.push_str(&escape(v));
            out.push('\'');
        }
        if self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for c in &self.children {
            match c {
                Node::Element(e) => e.write(out),
                Node::Text(t) => out.push_str(&escape(t)),
            }
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push('>');
    }

    /// The value of an attribute.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Sets an attribute, keeping its place when it exists.
    pub fn set_attr(&mut self, key: &str, value: &str) {
        match self.attrs.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value.to_string(),
            None => self.attrs.push((key.to_string(), value.to_string())),
        }
    }

    /// Removes an attribute.
    pub fn remove_attr(&mut self, key: &str) {
        self.attrs.retain(|(k, _)| k != key);
    }

    /// The first child element of that name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.elements().find(|e| e.name == name)
    }

    /// The first child element of that name, to change.
    pub fn child_mut(&mut self, name: &str) -> Option<&mut Element> {
        self.elements_mut().find(|e| e.name == name)
    }

    /// The first child element of that name, added at the end when missing.
    pub fn child_or_add(&mut self, name: &str) -> &mut Element {
        if self.child(name).is_none() {
            self.children.push(Node::Element(Element::new(name)));
        }
        self.elements_mut().find(|e| e.name == name).expect("just added")
    }

    /// The child elements.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|c| match c {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The child elements, to change.
    pub fn elements_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|c| match c {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// Keeps the child elements for which `keep` is true (and all text).
    pub fn retain_elements(&mut self, mut keep: impl FnMut(&mut Element) -> bool) {
        self.children.retain_mut(|c| match c {
            Node::Element(e) => keep(e),
            Node::Text(_) => true,
        });
    }

    /// The text of the element (its text children joined).
    pub fn text(&self) -> String {
        self.children
            .iter()
            .filter_map(|c| match c {
                Node::Text(t) => Some(t.as_str()),
                Node::Element(_) => None,
            })
            .collect()
    }

    /// Replaces the children with one text.
    pub fn set_text(&mut self, text: &str) {
        self.children = vec![Node::Text(text.to_string())];
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_domain_with_metadata_in_another_namespace_round_trips() {
        let xml = "<?xml version='1.0'?>\n<!-- c --><domain type='kvm'>\n  <name>a &amp; b</name>\n  \
                   <metadata><lo:libosinfo xmlns:lo=\"http://libosinfo.org/xmlns/libvirt/domain/1.0\">\
                   <lo:os id='http://debian.org/debian/12'/></lo:libosinfo></metadata>\n  \
                   <description><![CDATA[x < y]]> &#65;</description>\n</domain>";
        let tree = Element::parse(xml).expect("parses");
        assert_eq!(tree.child("name").map(Element::text).as_deref(), Some("a & b"));
        assert_eq!(tree.child("description").map(Element::text).as_deref(), Some("x < y A"));
        let again = Element::parse(&tree.to_xml()).expect("its output parses");
        assert_eq!(again, tree);
        assert!(tree.to_xml().contains("<lo:os id='http://debian.org/debian/12'/>"), "{}", tree.to_xml());
        assert!(tree.to_xml().contains("xmlns:lo='http://libosinfo.org/xmlns/libvirt/domain/1.0'"));
    }

    #[test]
    fn broken_documents_are_errors_not_panics() {
        for bad in ["", "<a>", "<a></b>", "<a/><b/>", "<a>&nope;</a>", "</a>", "<a x='1' x='2'/>", "<a \u{0}/>"] {
            assert!(Element::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
