//! Lambda `enumerate-images`: serves `replication::steps::EnumerateImages`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    functions::serve::<replication::steps::EnumerateImages>().await
}
