//! Lambda `enumerate-repositories`: see `replication::workflow::enumerate_repositories`.

use lambda_runtime::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let connections = functions::start()?;
    run(service_fn(|event: functions::RawEvent| async {
        functions::enumerate_repositories(&connections, functions::parse_event(event)?).await
    }))
    .await
}
