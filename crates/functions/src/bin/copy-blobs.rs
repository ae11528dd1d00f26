//! Lambda `copy-blobs`: serves `replication::steps::CopyBlobs`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    functions::serve::<replication::steps::CopyBlobs>().await
}
