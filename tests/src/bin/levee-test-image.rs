//! Assembles the appliance image the tests share, once per `./dev/test` run
//! and before the tests start, into the content-addressed store under the
//! target directory; prints its directory on stdout for `LEVEE_TEST_IMAGE`.

fn main() -> anyhow::Result<()> {
    let (dir, image, took) = levee_tests::image::assemble()?;
    eprintln!(
        "levee-test-image: image {} assembled once for this run in {:.1} s: {}",
        image["version"].as_str().unwrap_or("?"),
        took.as_secs_f64(),
        dir.display()
    );
    println!("{}", dir.display());
    Ok(())
}
