//! Lambda `plan-image`: plans a page of images; see `replication::workflow::plan_page`.

use lambda_runtime::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let connections = functions::start()?;
    run(service_fn(|event: functions::RawEvent| async {
        functions::plan_image(&connections, functions::parse_event(event)?).await
    }))
    .await
}
