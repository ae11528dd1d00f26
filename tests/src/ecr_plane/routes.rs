//! What a request addresses (`/v2/` paths as routes) and the ECR action IAM requires for it,
//! recorded for each request as a [`PlaneOp`].

use axum::http::Method;

/// A registry request as IAM sees it: the function that made it (`function/<name>` in the
/// user agent; empty for the harness's own), the ECR action it needs and the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaneOp {
    /// The Lambda function, or empty.
    pub function: String,
    /// e.g. `ecr:PutImage`.
    pub action: &'static str,
    /// Repository name.
    pub repository: String,
}

/// The IAM action ECR requires for a registry request ("Amazon ECR required IAM permissions for
/// pushing and pulling images": BatchGetImage for manifests, GetDownloadUrlForLayer for blobs,
/// BatchCheckLayerAvailability to check a layer, Initiate/UploadLayerPart/CompleteLayerUpload
/// and PutImage to push, ListImages to list tags, BatchDeleteImage to delete); `None` for
/// requests that need none (`/v2/`, cancelling an upload). The referrers API is taken to need
/// BatchGetImage, like the manifests it lists.
pub(super) fn ecr_action(route: &Route, method: &Method) -> Option<(&'static str, String)> {
    let (action, name) = match (route, method) {
        (Route::Manifest { name, .. }, &Method::GET | &Method::HEAD) => ("ecr:BatchGetImage", name),
        (Route::Manifest { name, .. }, &Method::PUT) => ("ecr:PutImage", name),
        (Route::Manifest { name, .. }, &Method::DELETE) => ("ecr:BatchDeleteImage", name),
        (Route::Blob { name }, &Method::GET) => ("ecr:GetDownloadUrlForLayer", name),
        (Route::Blob { name }, &Method::HEAD) => ("ecr:BatchCheckLayerAvailability", name),
        (Route::UploadStart { name }, &Method::POST) => ("ecr:InitiateLayerUpload", name),
        (Route::UploadSession { name, .. }, &Method::PATCH) => ("ecr:UploadLayerPart", name),
        (Route::UploadSession { name, .. }, &Method::PUT) => ("ecr:CompleteLayerUpload", name),
        (Route::Tags { name }, &Method::GET) => ("ecr:ListImages", name),
        (Route::Referrers { name, .. }, &Method::GET) => ("ecr:BatchGetImage", name),
        _ => return None,
    };
    Some((action, name.clone()))
}

/// What a `/v2/` path addresses.
pub(super) enum Route {
    UploadStart { name: String },
    UploadSession { name: String, id: String },
    Blob { name: String },
    Manifest { name: String, reference: String },
    Tags { name: String },
    Referrers { name: String, digest: String },
    Other,
}

pub(super) fn route(path: &str) -> Route {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Route::Other;
    };
    if let Some((name, id)) = rest.rsplit_once("/blobs/uploads/") {
        if id.is_empty() {
            return Route::UploadStart {
                name: name.to_string(),
            };
        }
        return Route::UploadSession {
            name: name.to_string(),
            id: id.to_string(),
        };
    }
    if let Some((name, _)) = rest.rsplit_once("/blobs/") {
        return Route::Blob {
            name: name.to_string(),
        };
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return Route::Manifest {
            name: name.to_string(),
            reference: reference.to_string(),
        };
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Route::Tags {
            name: name.to_string(),
        };
    }
    if let Some((name, digest)) = rest.rsplit_once("/referrers/") {
        return Route::Referrers {
            name: name.to_string(),
            digest: digest.to_string(),
        };
    }
    Route::Other
}
