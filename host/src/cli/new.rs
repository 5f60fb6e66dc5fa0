//! `jasper-host new NAME`: a new handler crate from the template in
//! `host/templates/handler/` (Cargo.toml with the cdylib line and a
//! size-tuned release profile, a handler with native tests, a jasper.toml for
//! running it). What it writes is tested end to end in `tests/suites/template.rs`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

const CARGO_TOML: &str = include_str!("../../templates/handler/Cargo.toml.tmpl");
const LIB_RS: &str = include_str!("../../templates/handler/lib.rs.tmpl");
const JASPER_TOML: &str = include_str!("../../templates/handler/jasper.toml.tmpl");
const GITIGNORE: &str = include_str!("../../templates/handler/gitignore.tmpl");

/// Where this binary's own checkout keeps the guest SDK (the default of `--sdk`).
const BUILT_WITH_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk");

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The plugin's name: its crate, its .wasm file and its name in the host
    /// (letters, digits, '_'; a letter first).
    pub name: String,
    /// The folder to make the crate in (it gets a sub-folder NAME).
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub dir: PathBuf,
    /// The guest SDK (`jasper-guest`): the guest-sdk folder of a jasper-host
    /// checkout. Default: the one this binary was built from.
    #[arg(long, value_name = "PATH")]
    pub sdk: Option<PathBuf>,
}

pub(crate) fn new(args: &NewArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let sdk = find_sdk(args.sdk.as_deref())?;
    let root = args.dir.join(&args.name);
    write_crate(&root, &args.name, &sdk)?;
    println!("made plugin crate {}", root.display());
    println!();
    println!("next:");
    println!("  cd {}", root.display());
    println!("  cargo test                                   # the handler's native tests");
    println!("  cargo build --release --target wasm32-wasip2");
    println!(
        "  mkdir -p plugins && cp target/wasm32-wasip2/release/{}.wasm plugins/",
        args.name
    );
    println!(
        "  jasper-host run --config jasper.toml         # leave it running; in another shell:"
    );
    println!("  jasper-host send --config jasper.toml --type Greet --body '{{\"name\":\"ann\"}}'");
    Ok(())
}

/// A name that is at once a crate name, a library name and a plugin name
/// (the .wasm's stem): no '-', which cargo would turn into '_' in the file.
fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok || name.len() > 64 {
        bail!(
            "plugin name {name:?}: use 1 to 64 lowercase letters, digits or '_', a letter first \
             (it names the crate, the .wasm file and the plugin)"
        );
    }
    Ok(())
}

/// The guest SDK folder, checked to hold the `jasper-guest` crate, as an
/// absolute path (the new crate may be anywhere).
fn find_sdk(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = given.map_or_else(|| PathBuf::from(BUILT_WITH_SDK), Path::to_path_buf);
    let manifest = dir.join("Cargo.toml");
    let holds_sdk = fs::read_to_string(&manifest)
        .map(|t| t.contains("name = \"jasper-guest\""))
        .unwrap_or(false);
    if !holds_sdk {
        let what = if given.is_some() {
            "--sdk"
        } else {
            "the guest SDK this binary was built from"
        };
        bail!(
            "{what}: no jasper-guest crate at {} (pass --sdk PATH, the guest-sdk folder of a \
             jasper-host checkout)",
            dir.display()
        );
    }
    dir.canonicalize()
        .with_context(|| format!("resolving the guest SDK path {}", dir.display()))
}

fn write_crate(root: &Path, name: &str, sdk: &Path) -> anyhow::Result<()> {
    if root.exists() {
        bail!(
            "{} already exists: choose another name or --dir",
            root.display()
        );
    }
    // A TOML string literal, quoted and escaped.
    let sdk = toml::Value::String(sdk.display().to_string()).to_string();
    let fill = |t: &str| t.replace("{{name}}", name).replace("{{sdk}}", &sdk);
    let src = root.join("src");
    fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    for (path, text) in [
        (root.join("Cargo.toml"), fill(CARGO_TOML)),
        (src.join("lib.rs"), fill(LIB_RS)),
        (root.join("jasper.toml"), fill(JASPER_TOML)),
        (root.join(".gitignore"), GITIGNORE.to_string()),
    ] {
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_one_crate_lib_and_plugin_name_are_refused() {
        for bad in ["", "Greeter", "my-plugin", "1st", "a b", "émile"] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        for good in ["greeter", "orders_v2", "a"] {
            check_name(good).unwrap();
        }
    }

    #[test]
    fn the_crate_names_the_plugin_and_the_sdk_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let sdk = find_sdk(None).unwrap();
        let root = dir.path().join("greeter");
        write_crate(&root, "greeter", &sdk).unwrap();
        let cargo = fs::read_to_string(root.join("Cargo.toml")).unwrap();
        let parsed: toml::Table = cargo.parse().unwrap();
        assert_eq!(parsed["package"]["name"].as_str(), Some("greeter"));
        assert_eq!(
            parsed["lib"]["crate-type"].as_array().unwrap()[0].as_str(),
            Some("cdylib")
        );
        assert_eq!(
            parsed["dependencies"]["jasper-guest"]["path"].as_str(),
            Some(sdk.to_str().unwrap())
        );
        let config: toml::Table = fs::read_to_string(root.join("jasper.toml"))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(config["node"]["name"].as_str(), Some("greeter-1"));
        let lib = fs::read_to_string(root.join("src/lib.rs")).unwrap();
        assert!(lib.starts_with("//! Plugin `greeter`"), "{lib}");
        assert!(!lib.contains("{{"), "a placeholder left: {lib}");

        let again = write_crate(&root, "greeter", &sdk).unwrap_err().to_string();
        assert!(again.contains("already exists"), "{again}");
    }

    /// The README's copy-paste path shows what `new` writes, word for word:
    /// what CI builds and runs (tests/suites/template.rs) is what it shows.
    #[test]
    fn the_readme_shows_the_template_as_it_is() {
        let readme = include_str!("../../../README.md");
        let cargo = CARGO_TOML
            .replace("{{name}}", "greeter")
            .replace("{{sdk}}", "\"/path/to/jasper-host/guest-sdk\"");
        let lib = LIB_RS.replace("{{name}}", "greeter");
        assert!(
            readme.contains(&format!("```toml\n{cargo}```")),
            "README.md's \"Writing a handler\" Cargo.toml is not the template's:\n{cargo}"
        );
        assert!(
            readme.contains(&format!("```rust\n{lib}```")),
            "README.md's \"Writing a handler\" src/lib.rs is not the template's:\n{lib}"
        );
    }

    #[test]
    fn a_folder_without_the_sdk_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_sdk(Some(dir.path())).unwrap_err().to_string();
        assert!(
            err.contains("--sdk") && err.contains(&dir.path().display().to_string()),
            "{err}"
        );
    }
}
