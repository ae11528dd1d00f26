//! Lambda `verify-repository`: serves `replication::steps::VerifyRepository`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    functions::serve::<replication::steps::VerifyRepository>().await
}
