//! Lambda `enumerate-repositories`: serves `replication::steps::EnumerateRepositories`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    functions::serve::<replication::steps::EnumerateRepositories>().await
}
