//! Lambda `plan-image`: serves `replication::steps::PlanImage`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    functions::serve::<replication::steps::PlanImage>().await
}
