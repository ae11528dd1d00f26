//! Lambda `enumerate-images`: see `replication::workflow::enumerate_images`.

use lambda_runtime::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let connections = functions::start()?;
    run(service_fn(|event: functions::RawEvent| async {
        functions::enumerate_images(&connections, functions::parse_event(event)?).await
    }))
    .await
}
