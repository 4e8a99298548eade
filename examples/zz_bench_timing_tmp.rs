#[path = "../tests/support/mod.rs"]
mod support;
#[tokio::main]
async fn main() {
    let t = std::time::Instant::now();
    let l = support::layer::build_layer(256 << 20, 0);
    println!("build 256MiB level0 {:?}", t.elapsed());
    let r = support::Registry::start().await;
    let t = std::time::Instant::now();
    let c = reqwest::Client::new();
    let loc = c.post(format!("{}/v2/x/blobs/uploads/", r.url())).send().await.unwrap().headers()["location"].to_str().unwrap().to_string();
    let resp = c.put(format!("{loc}&digest={}", l.digest)).header("content-length", l.size).body(reqwest::Body::from(tokio::fs::File::from_std(l.file))).send().await.unwrap();
    println!("upload {} {:?}", resp.status(), t.elapsed());
}
