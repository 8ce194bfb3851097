//! The embedding example (`examples/embed.rs`) runs to the end: two nodes
//! over TCP on 127.0.0.1, a write seen by the other node, a delete.

#[path = "../examples/embed.rs"]
#[allow(dead_code)]
mod embed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedding_example_runs() {
    embed::run().await.unwrap();
}
