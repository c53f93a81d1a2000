//! Builds an image without the `levee` CLI:
//! `cargo run -p levee-image --example build-image -- MANIFEST OUT AGENT CACHE [--refresh-lock]`.

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [manifest, out, agent, cache, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: build-image MANIFEST OUT AGENT CACHE [--refresh-lock]");
    };
    let mut opts = levee_image::BuildOptions::new(manifest, out, agent, cache);
    opts.refresh_lock = rest.iter().any(|a| a == "--refresh-lock");
    let built = levee_image::build(&opts, &levee_image::Progress::stderr())?;
    println!("{}", serde_json::to_string_pretty(&built.image)?);
    Ok(())
}
