//! Manifest media types and the parts of a manifest a copy needs: which blobs and which child
//! manifests it references. The bytes themselves are always kept as received.

use bytes::Bytes;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::strict_json::{self, Refusal};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The `Accept` header sent on every manifest request: every image and index type we can copy.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest accepted (ECR's limit is 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// A manifest exactly as the registry served it.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The bytes received, never re-serialised.
    pub bytes: Bytes,
    /// Media type (from the body's `mediaType`, else the `Content-Type`).
    pub media_type: String,
    /// sha256 of `bytes`.
    pub digest: Digest,
}

/// What a manifest references.
#[derive(Debug, Clone)]
pub enum ManifestContent {
    /// An image: one config blob and its layers.
    Image {
        /// The config descriptor.
        config: Box<Descriptor>,
        /// Layer descriptors in order (may repeat a digest).
        layers: Vec<Descriptor>,
    },
    /// An index: child manifests by digest.
    Index {
        /// Child manifest descriptors.
        manifests: Vec<Descriptor>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
}

impl Manifest {
    /// Builds a manifest from received bytes, working out the media type from the body (or the
    /// `Content-Type` when the body has none). The bytes are first checked by
    /// [`strict_json::check_manifest`]: a repeated key, or a key that is a defined field but
    /// for case, makes the manifest ambiguous and it is refused.
    pub fn from_bytes(bytes: Bytes, content_type: Option<&str>, url: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidManifest {
            url: url.to_string(),
            reason,
        };
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(invalid(format!(
                "{} bytes, over the 4 MiB limit",
                bytes.len()
            )));
        }
        // Read once, strictly, before anything else: a document Go's encoding/json (what
        // runtimes use) would read differently from us is refused, not interpreted.
        match strict_json::check_manifest(&bytes) {
            Ok(()) => {}
            Err(Refusal::Ambiguous { path, reason }) => {
                return Err(invalid(format!(
                    "ambiguous manifest (container runtimes and this replicator would read different documents): {path}: {reason}"
                )))
            }
            Err(other) => return Err(invalid(other.to_string())),
        }
        let probe: Probe =
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
        if probe.schema_version == Some(1) {
            return Err(invalid("Docker schema 1 manifests are not supported; convert the image to schema 2 or OCI first".into()));
        }
        let content_type = content_type
            .map(|c| c.split(';').next().unwrap_or(c).trim().to_string())
            .filter(|c| is_manifest_type(c));
        let media_type = match (probe.media_type, content_type) {
            (Some(m), _) => m,
            (None, Some(c)) => c,
            (None, None) if probe.manifests.is_some() => OCI_INDEX.to_string(),
            (None, None) => OCI_MANIFEST.to_string(),
        };
        if !is_manifest_type(&media_type) {
            return Err(invalid(format!("unsupported media type {media_type:?}")));
        }
        let digest = Digest::of(&bytes);
        Ok(Manifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Parses the referenced blobs and children.
    pub fn content(&self, url: &str) -> Result<ManifestContent> {
        let invalid = |e: serde_json::Error| Error::InvalidManifest {
            url: url.to_string(),
            reason: e.to_string(),
        };
        if is_index_type(&self.media_type) {
            let index: ImageIndex = serde_json::from_slice(&self.bytes).map_err(invalid)?;
            Ok(ManifestContent::Index {
                manifests: index.manifests().clone(),
            })
        } else {
            let image: ImageManifest = serde_json::from_slice(&self.bytes).map_err(invalid)?;
            Ok(ManifestContent::Image {
                config: Box::new(image.config().clone()),
                layers: image.layers().clone(),
            })
        }
    }
}

/// Whether a media type is one of the manifest or index types we copy.
pub fn is_manifest_type(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_MANIFEST_LIST
    )
}

/// Whether a media type is an index (OCI index or Docker manifest list).
pub fn is_index_type(media_type: &str) -> bool {
    matches!(media_type, OCI_INDEX | DOCKER_MANIFEST_LIST)
}

/// Whether a layer is foreign / non-distributable: such layers are not copied, their reference
/// is kept as is (the registry serving them is named in the descriptor's `urls`).
pub fn is_foreign_layer(media_type: &str) -> bool {
    media_type.contains(".foreign.") || media_type.contains(".nondistributable.")
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn keeps_bytes_and_reads_the_media_type_from_the_body() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":0,"digest":"{D}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","size":5,"digest":"{D}","urls":["https://example.com/x"]}}]}}"#
        );
        let m =
            Manifest::from_bytes(Bytes::from(body.clone()), Some("application/json"), "u").unwrap();
        assert_eq!(m.bytes, body.as_bytes());
        assert_eq!(m.media_type, DOCKER_MANIFEST);
        assert_eq!(m.digest, Digest::of(body.as_bytes()));
        match m.content("u").unwrap() {
            ManifestContent::Image { layers, .. } => {
                assert!(is_foreign_layer(layers[0].media_type().as_ref()))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_index_without_media_type_is_recognised() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","size":1,"digest":"{D}"}}]}}"#
        );
        let m = Manifest::from_bytes(Bytes::from(body), None, "u").unwrap();
        assert_eq!(m.media_type, OCI_INDEX);
        assert!(
            matches!(m.content("u").unwrap(), ManifestContent::Index { manifests } if manifests.len() == 1)
        );
    }

    #[test]
    fn an_ambiguous_manifest_is_refused_naming_what_was_found() {
        let layer = format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":5,"digest":"{D}"}}"#
        );
        for (extra, found) in [
            (
                format!(r#","Layers":[{layer}]"#),
                r#"$: key "Layers" differs from the defined field "layers" only by case"#,
            ),
            (
                format!(r#","layers":[{layer}]"#),
                r#"$: key "layers" appears twice"#,
            ),
        ] {
            let body = format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"{D}"}},"layers":[]{extra}}}"#
            );
            match Manifest::from_bytes(Bytes::from(body), None, "u") {
                Err(Error::InvalidManifest { url, reason }) => {
                    assert_eq!(url, "u");
                    assert!(reason.starts_with("ambiguous manifest"), "{reason}");
                    assert!(reason.contains(found), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn rejects_schema1_non_json_and_unknown_types() {
        for body in [
            r#"{"schemaVersion":1,"name":"x"}"#.to_string(),
            "not json".to_string(),
            r#"{"schemaVersion":2,"mediaType":"text/plain"}"#.to_string(),
        ] {
            assert!(matches!(
                Manifest::from_bytes(Bytes::from(body), None, "u"),
                Err(Error::InvalidManifest { .. })
            ));
        }
    }
}
