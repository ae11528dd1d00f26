//! A verified OCI layout served to the workflow's steps as a read-only registry (issue 35: the
//! state machine imports a layout with the same steps it replicates a registry with).
//!
//! The functions reach a source through a [`oci::RegistryClient`]: listing (`_catalog`, tag
//! lists), manifests, blobs in byte ranges (a large layer split across invocations), the
//! referrers API for the signature gate. [`LayoutRegistry`] answers exactly those requests on
//! the function's own loopback interface (`127.0.0.1`, a port the system picks), only to a
//! client holding the server's credential (made at random for each server, given to the
//! function's own client), and only with what the layout's verified statement names
//! ([`VerifiedLayout`]):
//! - a tag as the statement names it in its repository (an image's, or a tag-scheme artifact's
//!   of one of its images), at the statement's digest, media type and size;
//! - a manifest by digest only when the statement names it for that repository (an image or a
//!   referrer of one) or it is a child of one of those indexes; bounded and checked against
//!   its digest before it is sent;
//! - a blob by digest, streamed as stored (in byte ranges when asked): its digest is checked
//!   where it arrives (the destination registry refuses a blob whose bytes are not its
//!   digest), and a blob alone makes no image;
//! - the referrers of a digest: the statement's OCI 1.1 referrers of that repository's images
//!   with that subject, with the `artifactType` the statement signs.
//!
//! Everything else is `404`, a write `405`: the served registry takes no write.

mod http;
mod manifests;
mod served;
mod uploads;

use std::sync::{Arc, RwLock};

use base64::Engine;

use oci::layout::PartUploads;

use crate::error::{Error, Result};

pub use served::VerifiedLayout;

/// The user name of the served registry's credential.
const USER: &str = "layout";

pub use manifests::{ExportNames, PendingRef, Provenance, MAX_PENDING_REFS, PENDING_REFS};
pub use uploads::PART_BYTES as EXPORT_PART_BYTES;

/// A layout served as a read-only registry on `127.0.0.1`; stops serving when dropped.
pub struct LayoutRegistry {
    host: String,
    secret: String,
    served: http::Served,
    server: tokio::task::JoinHandle<()>,
}

/// A layout the workflow exports blobs into, served as a registry that takes blob uploads on
/// `127.0.0.1` (see `uploads`); stops serving when dropped.
pub struct LayoutExportRegistry {
    host: String,
    secret: String,
    store: Arc<dyn PartUploads>,
    names: ExportNames,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for LayoutExportRegistry {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl LayoutExportRegistry {
    /// Serves `store` for uploads and manifests on a free port of `127.0.0.1`, to clients
    /// holding [`LayoutExportRegistry::credential`] only, recording the names given in `names`.
    pub async fn serve(store: Arc<dyn PartUploads>, names: ExportNames) -> Result<Self> {
        let location = store.location();
        let (host, secret, server) = listen(&location, |authorization| {
            http::router(
                http::Mode::Export(store.clone(), names.clone()),
                authorization,
            )
        })
        .await?;
        Ok(LayoutExportRegistry {
            host,
            secret,
            store,
            names,
            server,
        })
    }

    /// The layout written into, and the names given there, for the seal.
    pub fn export(&self) -> (&dyn oci::layout::LayoutStore, &ExportNames) {
        (self.store.as_ref(), &self.names)
    }

    /// `127.0.0.1:PORT`: the registry host the steps' client reaches the layout at.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The credential the server answers: the steps' client holds it for [`Self::host`].
    pub fn credential(&self) -> oci::Credential {
        credential(&self.secret)
    }
}

/// Moves an upload session another invocation's server opened (on another port) to the server
/// at `host`: the session's state is in its location's path, which any server of the layout
/// reads.
pub fn rehome(session: &mut oci::UploadSession, host: &str) -> Result<()> {
    let refused = |reason: &str| Error::Registry {
        image: session.repository.clone(),
        source: oci::Error::Upload {
            url: "<session>".into(),
            reason: reason.into(),
        },
    };
    let mut url = url::Url::parse(&session.location)
        .map_err(|_| refused("the upload session's location is not a URL"))?;
    let current = url::Url::parse(&format!("http://{host}/"))
        .map_err(|_| refused("the served layout's host is not a host"))?;
    if url.scheme() != "http" || !url.path().starts_with("/v2/") {
        return Err(refused("the upload session is not one of a served layout"));
    }
    // Nothing but the path and the token travel: no user name or password of the old one.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_host(current.host_str())
        .and_then(|()| {
            url.set_port(current.port())
                .map_err(|()| url::ParseError::InvalidPort)
        })
        .map_err(|_| refused("the served layout's host is not a host"))?;
    session.location = url.to_string();
    session.registry = host.to_string();
    Ok(())
}

fn credential(secret: &str) -> oci::Credential {
    oci::Credential::Basic {
        username: USER.into(),
        password: secret.to_string(),
    }
}

/// Listens on a free port of `127.0.0.1` with the app `make` builds for the server's
/// `Authorization` value: the host, the secret, the serving task.
async fn listen(
    location: &str,
    make: impl FnOnce(String) -> axum::Router,
) -> Result<(String, String, tokio::task::JoinHandle<()>)> {
    let refused = |reason: String| Error::Registry {
        image: format!("oci:{location}"),
        source: oci::Error::Layout {
            path: location.to_string(),
            reason,
        },
    };
    let mut random = [0u8; 32];
    getrandom::fill(&mut random)
        .map_err(|e| refused(format!("no random credential to serve it with: {e}")))?;
    let secret: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| refused(format!("no loopback port to serve it to the steps on: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| refused(format!("no loopback port to serve it to the steps on: {e}")))?
        .port();
    let authorization = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{secret}"))
    );
    let app = make(authorization);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("127.0.0.1:{port}"), secret, server))
}

impl Drop for LayoutRegistry {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl std::fmt::Debug for LayoutRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayoutRegistry")
            .field("host", &self.host)
            .finish()
    }
}

impl LayoutRegistry {
    /// Serves `layout` on a free port of `127.0.0.1`, to clients holding
    /// [`LayoutRegistry::credential`] only.
    pub async fn serve(layout: VerifiedLayout) -> Result<Self> {
        let location = layout.store.location();
        let served = Arc::new(RwLock::new(Arc::new(layout)));
        let (host, secret, server) = listen(&location, |authorization| {
            http::router(http::Mode::Import(served.clone()), authorization)
        })
        .await?;
        Ok(LayoutRegistry {
            host,
            secret,
            served,
            server,
        })
    }

    /// `127.0.0.1:PORT`: the registry host the steps' client reaches the layout at.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The credential the server answers: the steps' client holds it for [`Self::host`].
    pub fn credential(&self) -> oci::Credential {
        credential(&self.secret)
    }

    /// The layout served now.
    pub fn layout(&self) -> Arc<VerifiedLayout> {
        http::current(&self.served)
    }

    /// Serves `layout` from now on (a newer verification of the same place).
    pub fn replace(&self, layout: VerifiedLayout) {
        let layout = Arc::new(layout);
        match self.served.write() {
            Ok(mut held) => *held = layout,
            Err(poisoned) => *poisoned.into_inner() = layout,
        }
    }
}
