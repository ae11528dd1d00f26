//! Lambda `put-manifests`: serves `replication::steps::PutManifests`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    functions::serve::<replication::steps::PutManifests>().await
}
