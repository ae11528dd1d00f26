//! Lambda `ensure-repository`: serves `replication::steps::EnsureRepository`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    functions::serve::<replication::steps::EnsureRepository>().await
}
