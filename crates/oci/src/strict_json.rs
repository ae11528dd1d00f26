//! Strict reading of manifests: a document that two JSON readers could read differently is
//! refused before anything else looks at it.
//!
//! Container runtimes (docker, containerd, skopeo, the registries themselves) decode manifests
//! with Go's `encoding/json`, whose `Unmarshal` documentation says: "To unmarshal JSON into a
//! struct, Unmarshal matches incoming object keys to the keys used by Marshal (either the struct
//! field name or its tag), preferring an exact match but also accepting a case-insensitive
//! match", and, since Go 1.21, compares names by `foldName` (encoding/json's fold.go: each ASCII
//! letter upper-cased, every other rune mapped to `unicode.ToUpper(unicode.ToLower(r))`, so the
//! Kelvin sign U+212A is `K` and the long s U+017F is `S`). With a key repeated, each occurrence
//! is decoded in turn into the same field: the last one wins. Rust readers (serde derive,
//! oci-spec) match exact keys only, and others keep the first of a repeated key. A manifest with
//! `"layers"` and `"Layers"`, or `"layers"` twice, is therefore two documents: the one a
//! signature gate reads and the one a runtime runs. [`check_manifest`] refuses both, walking
//! the bytes once with serde's visitor (no value tree), with a bounded depth.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Deepest nesting of arrays and objects accepted (a manifest needs 4; serde_json itself stops
/// at 128).
pub const MAX_DEPTH: usize = 64;

/// The fields the OCI image spec (manifest, index, descriptor, platform) and Docker's schema 2
/// (manifest, manifest list) define, as their Go structs spell them in their JSON tags.
pub const DEFINED_FIELDS: &[&str] = &[
    "schemaVersion",
    "mediaType",
    "artifactType",
    "config",
    "layers",
    "manifests",
    "subject",
    "annotations",
    "digest",
    "size",
    "urls",
    "data",
    "platform",
    "architecture",
    "os",
    "os.version",
    "os.features",
    "variant",
    "features",
];

/// Longest key or path segment shown in a message (the rest is elided).
const SHOWN_KEY_CHARS: usize = 80;

/// Why a document is refused.
#[derive(Debug)]
pub enum Refusal {
    /// Not one JSON value.
    NotJson(serde_json::Error),
    /// Arrays and objects nested deeper than [`MAX_DEPTH`].
    TooDeep {
        /// The JSON path (`$.a[0]`) of the value one level too deep.
        path: String,
    },
    /// JSON that Go's `encoding/json` and other readers would read as different documents.
    Ambiguous {
        /// The JSON path of the object holding the key.
        path: String,
        /// What was found.
        reason: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotJson(e) => write!(f, "not JSON: {e}"),
            Refusal::TooDeep { path } => {
                write!(f, "{path}: nested deeper than {MAX_DEPTH} levels")
            }
            Refusal::Ambiguous { path, reason } => write!(f, "{path}: {reason}"),
        }
    }
}

impl std::error::Error for Refusal {}

/// Checks a manifest or index (OCI or Docker schema 2): no object anywhere repeats a key or
/// holds two keys equal under Go's case folding, and no object the spec defines as a struct
/// (the manifest or index itself, descriptors in `config`, `layers`, `manifests`, `subject`,
/// and their `platform`) has a key that is one of [`DEFINED_FIELDS`] but for case. Keys of
/// `annotations` are free-form: only the first two rules apply to them.
pub fn check_manifest(bytes: &[u8]) -> Result<(), Refusal> {
    walk(bytes, Kind::Manifest)
}

/// Checks any JSON document (an image config, a payload) for the rules that do not depend on
/// its schema: no object anywhere repeats a key or holds two keys equal under Go's case
/// folding.
pub fn check_document(bytes: &[u8]) -> Result<(), Refusal> {
    walk(bytes, Kind::Free)
}

/// Go's `foldName` (encoding/json, fold.go, Go 1.21+): ASCII letters upper-cased, any other
/// rune mapped to `unicode.ToUpper(unicode.ToLower(r))` (simple, one-rune case mappings). Two
/// keys with the same fold are the same field to Go.
pub fn go_fold(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii() {
                c.to_ascii_uppercase()
            } else {
                simple_upper(simple_lower(c))
            }
        })
        .collect()
}

/// Unicode's simple lowercase mapping (Go's `unicode.ToLower`). Rust's `to_lowercase` is the
/// full mapping, which differs only for U+0130 (`İ`, full `i̇`, simple `i`).
fn simple_lower(c: char) -> char {
    if c == '\u{130}' {
        return 'i';
    }
    let mut lower = c.to_lowercase();
    match (lower.next(), lower.next()) {
        (Some(l), None) => l,
        _ => c,
    }
}

/// Unicode's simple uppercase mapping (Go's `unicode.ToUpper`). Where Rust's full mapping has
/// several characters (`ß` to `SS`, `ﬀ` to `FF`, ...), the simple one is the character itself,
/// except for the Greek letters with ypogegrammeni, whose simple uppercase is the titlecase
/// letter (SpecialCasing.txt against UnicodeData.txt).
fn simple_upper(c: char) -> char {
    let mut upper = c.to_uppercase();
    match (upper.next(), upper.next()) {
        (Some(u), None) => u,
        _ => match u32::from(c) {
            0x1F80..=0x1F87 | 0x1F90..=0x1F97 | 0x1FA0..=0x1FA7 => {
                char::from_u32(u32::from(c) + 8).unwrap_or(c)
            }
            0x1FB3 => '\u{1FBC}',
            0x1FC3 => '\u{1FCC}',
            0x1FF3 => '\u{1FFC}',
            _ => c,
        },
    }
}

/// What the schema says of a value, which decides the rules for its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The top-level manifest or index (a struct).
    Manifest,
    /// A descriptor (a struct).
    Descriptor,
    /// The array of descriptors of `layers` or `manifests`.
    Descriptors,
    /// A descriptor's `platform` (a struct).
    Platform,
    /// A free-form map (`annotations`) or a value the schema does not define.
    Free,
}

impl Kind {
    /// Whether Go decodes this object into a struct (so folded keys select its fields).
    fn is_struct(self) -> bool {
        // An object where an array of descriptors belongs is read as strictly as a descriptor.
        matches!(
            self,
            Kind::Manifest | Kind::Descriptor | Kind::Descriptors | Kind::Platform
        )
    }

    /// The kind of the value under `key` in an object of this kind.
    fn member(self, key: &str) -> Kind {
        match (self, key) {
            (Kind::Manifest, "config" | "subject") => Kind::Descriptor,
            (Kind::Manifest, "layers" | "manifests") => Kind::Descriptors,
            (Kind::Descriptor | Kind::Descriptors, "platform") => Kind::Platform,
            _ => Kind::Free,
        }
    }

    /// The kind of an element of an array of this kind.
    fn element(self) -> Kind {
        match self {
            Kind::Descriptors => Kind::Descriptor,
            _ => Kind::Free,
        }
    }
}

/// One step of a JSON path.
enum Segment {
    Key(String),
    Index(usize),
}

/// The walk's state: where it is, how deep, and the refusal once one is found.
#[derive(Default)]
struct Walk {
    path: Vec<Segment>,
    depth: usize,
    refusal: Option<Refusal>,
}

impl Walk {
    /// The current JSON path, `$.layers[0]` or `$.annotations["org.example.note"]`.
    fn path(&self) -> String {
        let mut out = String::from("$");
        for segment in &self.path {
            match segment {
                Segment::Index(i) => out.push_str(&format!("[{i}]")),
                Segment::Key(k)
                    if !k.is_empty()
                        && k.len() <= SHOWN_KEY_CHARS
                        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                {
                    out.push('.');
                    out.push_str(k);
                }
                Segment::Key(k) => {
                    out.push('[');
                    out.push_str(&quote(k));
                    out.push(']');
                }
            }
        }
        out
    }

    /// Records an ambiguity at the current path; the error only stops serde's walk.
    fn ambiguous<E: de::Error>(&mut self, reason: String) -> E {
        self.refusal = Some(Refusal::Ambiguous {
            path: self.path(),
            reason,
        });
        E::custom("ambiguous")
    }

    /// Goes one level down, refusing past [`MAX_DEPTH`].
    fn enter<E: de::Error>(&mut self) -> Result<(), E> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            self.refusal = Some(Refusal::TooDeep { path: self.path() });
            return Err(E::custom("too deep"));
        }
        Ok(())
    }

    /// Checks one key of an object of `kind` against the keys already seen in it (folded key
    /// to the key as written).
    fn check_key<E: de::Error>(
        &mut self,
        kind: Kind,
        key: &str,
        seen: &mut HashMap<String, String>,
    ) -> Result<(), E> {
        let folded = go_fold(key);
        if kind.is_struct() {
            if let Some(field) = DEFINED_FIELDS
                .iter()
                .find(|f| *f != &key && f.to_ascii_uppercase() == folded)
            {
                return Err(self.ambiguous(format!(
                    "key {} differs from the defined field {} only by case (Go's encoding/json, which container runtimes use, would read it as that field)",
                    quote(key),
                    quote(field)
                )));
            }
        }
        match seen.get(&folded) {
            Some(first) if first == key => Err(self.ambiguous(format!(
                "key {} appears twice (Go's encoding/json keeps the last, other readers the first)",
                quote(key)
            ))),
            Some(first) => Err(self.ambiguous(format!(
                "keys {} and {} differ only by case (Go's encoding/json folds case: one field to it, keeping the last; two keys to other readers)",
                quote(first),
                quote(key)
            ))),
            None => {
                seen.insert(folded, key.to_string());
                Ok(())
            }
        }
    }
}

/// A key as a JSON string, every non-ASCII or control character escaped (`"layer\u017F"`, so
/// the look-alike shows), cut at [`SHOWN_KEY_CHARS`] characters.
fn quote(key: &str) -> String {
    let mut out = String::from("\"");
    for (i, c) in key.chars().enumerate() {
        if i == SHOWN_KEY_CHARS {
            out.push_str("...");
            break;
        }
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
        }
    }
    out.push('"');
    out
}

/// Walks the document as `kind`; the first refusal found, else a syntax error, else nothing.
fn walk(bytes: &[u8], kind: Kind) -> Result<(), Refusal> {
    let mut state = Walk::default();
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let result = Node {
        walk: &mut state,
        kind,
    }
    .deserialize(&mut deserializer)
    .and_then(|()| deserializer.end());
    match (state.refusal, result) {
        (Some(refusal), _) => Err(refusal),
        (None, Err(e)) => Err(Refusal::NotJson(e)),
        (None, Ok(())) => Ok(()),
    }
}

/// One value of the document, of a kind: a seed that reads it and a visitor that checks it.
struct Node<'w> {
    walk: &'w mut Walk,
    kind: Kind,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.walk.enter()?;
        let element = self.kind.element();
        for index in 0.. {
            self.walk.path.push(Segment::Index(index));
            let more = seq.next_element_seed(Node {
                walk: self.walk,
                kind: element,
            })?;
            self.walk.path.pop();
            if more.is_none() {
                break;
            }
        }
        self.walk.depth -= 1;
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.walk.enter()?;
        let mut seen = HashMap::new();
        while let Some(key) = map.next_key::<String>()? {
            self.walk.check_key(self.kind, &key, &mut seen)?;
            let kind = self.kind.member(&key);
            self.walk.path.push(Segment::Key(key));
            map.next_value_seed(Node {
                walk: self.walk,
                kind,
            })?;
            self.walk.path.pop();
        }
        self.walk.depth -= 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn layer(media_type_key: &str) -> String {
        format!(
            r#"{{"{media_type_key}":"application/vnd.oci.image.layer.v1.tar+gzip","size":5,"digest":"{D}"}}"#
        )
    }

    fn oci_manifest(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"{D}"}},"layers":[{}]{extra}}}"#,
            layer("mediaType")
        )
    }

    /// The refusal's path and reason; panics when the document passes or is not JSON.
    fn ambiguity(doc: &str) -> (String, String) {
        match check_manifest(doc.as_bytes()) {
            Err(Refusal::Ambiguous { path, reason }) => (path, reason),
            other => panic!("{other:?} for {doc}"),
        }
    }

    #[test]
    fn a_repeated_key_is_refused_at_the_top_and_nested() {
        let (path, reason) = ambiguity(&oci_manifest(&format!(
            r#","layers":[{}]"#,
            layer("mediaType")
        )));
        assert_eq!(path, "$");
        assert_eq!(
            reason,
            r#"key "layers" appears twice (Go's encoding/json keeps the last, other readers the first)"#
        );
        let nested = oci_manifest("").replace(r#""size":5,"#, r#""size":5,"size":6,"#);
        let (path, reason) = ambiguity(&nested);
        assert_eq!(path, "$.layers[0]");
        assert!(
            reason.starts_with(r#"key "size" appears twice"#),
            "{reason}"
        );
        // Deep in a value the schema does not know, too.
        let (path, _) = ambiguity(&oci_manifest(r#","x":{"y":[{"a":1,"a":2}]}"#));
        assert_eq!(path, "$.x.y[0]");
        // Not a struct anywhere: still refused.
        assert!(matches!(
            check_document(br#"{"a":[{"b":1,"b":1}]}"#),
            Err(Refusal::Ambiguous { path, .. }) if path == "$.a[0]"
        ));
    }

    #[test]
    fn a_case_variant_of_layers_is_refused_alone_or_beside_layers() {
        let both = oci_manifest(&format!(r#","Layers":[{}]"#, layer("mediaType")));
        let (path, reason) = ambiguity(&both);
        assert_eq!(path, "$");
        assert_eq!(
            reason,
            r#"key "Layers" differs from the defined field "layers" only by case (Go's encoding/json, which container runtimes use, would read it as that field)"#
        );
        let alone = oci_manifest("").replace(r#""layers""#, r#""LAYERS""#);
        assert!(ambiguity(&alone).1.contains(r#"key "LAYERS""#));
    }

    #[test]
    fn a_case_variant_subject_is_refused() {
        let doc = oci_manifest(&format!(
            r#","Subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"{D}"}}"#
        ));
        let (path, reason) = ambiguity(&doc);
        assert_eq!(path, "$");
        assert!(
            reason.starts_with(r#"key "Subject" differs from the defined field "subject""#),
            "{reason}"
        );
    }

    #[test]
    fn a_case_variant_media_type_inside_a_descriptor_is_refused() {
        for key in ["MediaType", "mediaTYPE", "mediatype"] {
            let doc = oci_manifest("").replace(&layer("mediaType"), &layer(key));
            let (path, reason) = ambiguity(&doc);
            assert_eq!(path, "$.layers[0]");
            assert_eq!(
                reason,
                format!(
                    r#"key "{key}" differs from the defined field "mediaType" only by case (Go's encoding/json, which container runtimes use, would read it as that field)"#
                )
            );
        }
        // In the config descriptor, and in an index child's platform.
        let config = oci_manifest("").replace(r#""size":2"#, r#""Size":2"#);
        assert_eq!(ambiguity(&config).0, "$.config");
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"m","size":1,"digest":"{D}","platform":{{"architecture":"amd64","OS":"linux"}}}}]}}"#
        );
        let (path, reason) = ambiguity(&index);
        assert_eq!(path, "$.manifests[0].platform");
        assert!(reason.contains(r#"defined field "os""#), "{reason}");
    }

    #[test]
    fn the_kelvin_sign_and_the_long_s_fold_as_go_folds_them() {
        assert_eq!(go_fold("\u{212A}ind"), "KIND");
        assert_eq!(go_fold("layer\u{17F}"), "LAYERS");
        assert_eq!(go_fold("\u{130}"), "I");
        assert_eq!(go_fold("stra\u{DF}e"), "STRA\u{DF}E");
        // "layerſ" is "layers" to Go: refused with the look-alike shown escaped.
        let doc = oci_manifest("").replace(r#""layers""#, "\"layer\u{17F}\"");
        let (path, reason) = ambiguity(&doc);
        assert_eq!(path, "$");
        assert!(
            reason.starts_with(r#"key "layer\u017F" differs from the defined field "layers""#),
            "{reason}"
        );
        // A Kelvin sign in a free-form map collides with the ASCII key it folds to.
        let doc = oci_manifest(r#","annotations":{"k":"1","\u212A":"2"}"#);
        let (path, reason) = ambiguity(&doc);
        assert_eq!(path, "$.annotations");
        assert!(
            reason.starts_with(r#"keys "k" and "\u212A" differ only by case"#),
            "{reason}"
        );
        // ... and in a descriptor's defined field.
        let doc = oci_manifest("").replace(r#""size":5"#, "\"\u{17F}ize\":5");
        assert_eq!(ambiguity(&doc).0, "$.layers[0]");
    }

    #[test]
    fn annotation_keys_may_be_any_case_but_not_repeated_or_folded_together() {
        let any_case =
            oci_manifest(r#","annotations":{"Layers":"x","MediaType":"y","org.Example.NOTE":"z"}"#);
        check_manifest(any_case.as_bytes()).unwrap();
        let layer_annotations = oci_manifest("").replace(
            r#""size":5,"#,
            r#""size":5,"annotations":{"Digest":"a","SIZE":"b"},"#,
        );
        check_manifest(layer_annotations.as_bytes()).unwrap();
        let repeated = oci_manifest(r#","annotations":{"a":"1","a":"2"}"#);
        let (path, reason) = ambiguity(&repeated);
        assert_eq!(path, "$.annotations");
        assert!(reason.starts_with(r#"key "a" appears twice"#), "{reason}");
        let folded = oci_manifest(
            r#","annotations":{"org.opencontainers.image.title":"1","org.opencontainers.image.TITLE":"2"}"#,
        );
        assert_eq!(ambiguity(&folded).0, "$.annotations");
        let dotted = oci_manifest(r#","annotations":{"org.a":{"b":1,"b":2}}"#);
        assert_eq!(ambiguity(&dotted).0, r#"$.annotations["org.a"]"#);
    }

    #[test]
    fn oci_and_docker_manifests_and_indexes_pass() {
        let oci = oci_manifest(&format!(
            r#","artifactType":"application/x","subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"{D}"}},"annotations":{{"org.opencontainers.image.created":"2026-01-01T00:00:00Z"}}"#
        ));
        check_manifest(oci.as_bytes()).unwrap();
        let docker = format!(
            r#"{{
   "schemaVersion": 2,
   "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
   "config": {{"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7023, "digest": "{D}"}},
   "layers": [
      {{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 32654, "digest": "{D}"}},
      {{"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "size": 16724, "digest": "{D}", "urls": ["https://example.com/l"]}}
   ]
}}"#
        );
        check_manifest(docker.as_bytes()).unwrap();
        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":7143,"digest":"{D}","platform":{{"architecture":"ppc64le","os":"linux"}}}},{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":7682,"digest":"{D}","platform":{{"architecture":"amd64","os":"windows","os.version":"10.0.17763.1","os.features":["win32k"],"variant":"v8","features":["sse4"]}}}}]}}"#
        );
        check_manifest(list.as_bytes()).unwrap();
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"{D}","platform":{{"architecture":"arm64","os":"linux","variant":"v8"}},"annotations":{{"vnd.docker.reference.type":"attestation-manifest"}}}}],"annotations":{{"a":"b"}}}}"#
        );
        check_manifest(index.as_bytes()).unwrap();
        // A value that is not JSON is told apart from an ambiguous one.
        assert!(matches!(
            check_manifest(b"{\"layers\":[}"),
            Err(Refusal::NotJson(_))
        ));
        assert!(matches!(check_manifest(b"{} {}"), Err(Refusal::NotJson(_))));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        match check_manifest(deep.as_bytes()) {
            Err(Refusal::TooDeep { path }) => {
                assert_eq!(path, format!("${}", "[0]".repeat(MAX_DEPTH)))
            }
            other => panic!("{other:?}"),
        }
        let objects = format!("{}{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
        assert!(matches!(
            check_document(objects.as_bytes()),
            Err(Refusal::TooDeep { .. })
        ));
        // Unclosed: still bounded.
        assert!(check_document("[".repeat(1_000_000).as_bytes()).is_err());
        // MAX_DEPTH levels are read.
        let fits = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        check_document(fits.as_bytes()).unwrap();
    }

    #[test]
    fn messages_cut_long_keys() {
        let long = "k".repeat(10_000);
        let doc = format!(r#"{{"a":{{"{long}":1,"{long}":2}}}}"#);
        let Err(refusal) = check_document(doc.as_bytes()) else {
            panic!("passed")
        };
        assert!(refusal.to_string().len() < 300, "{refusal}");
    }
}
