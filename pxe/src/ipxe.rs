//! iPXE boot scripts, rendered as pure functions of their inputs.
//!
//! A boot profile carries a kernel command-line *template* such as
//! `console=ttyS0 levee.url={url} BOOTIF={mac}`; [`fill_template`] fills in the
//! `{name}` variables, and [`render`] turns kernel, initrd and command line
//! into the script iPXE runs.

use std::collections::BTreeMap;

/// Why a template or script cannot be rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("unknown variable `{{{name}}}` in the command-line template; known: {known}")]
    UnknownVariable { name: String, known: String },
    #[error("unclosed `{{` at byte {at} of the command-line template (write `{{{{` for a literal brace)")]
    Unclosed { at: usize },
    #[error("the command line may not contain {what}: iPXE would interpret it")]
    Forbidden { what: &'static str },
}

/// Fills `{name}` variables from `vars`. `{{` and `}}` stand for literal
/// braces. Every variable must be known, so a typo fails when the profile is
/// saved rather than on a machine at boot.
pub fn fill_template(
    template: &str,
    vars: &BTreeMap<&str, String>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    let mut offset = 0;
    while let Some(pos) = rest.find(['{', '}']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            offset += pos + 2;
            continue;
        }
        if let Some(after) = tail.strip_prefix('}') {
            // A lone closing brace is harmless; keep it.
            out.push('}');
            rest = after;
            offset += pos + 1;
            continue;
        }
        let end = tail
            .find('}')
            .ok_or(TemplateError::Unclosed { at: offset + pos })?;
        let name = &tail[1..end];
        let value = vars
            .get(name)
            .ok_or_else(|| TemplateError::UnknownVariable {
                name: name.to_string(),
                known: vars
                    .keys()
                    .map(|k| format!("{{{k}}}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            })?;
        out.push_str(value);
        rest = &tail[end + 1..];
        offset += pos + end + 1;
    }
    out.push_str(rest);
    check_cmdline(&out)?;
    Ok(out)
}

fn check_cmdline(s: &str) -> Result<(), TemplateError> {
    if s.contains(['\n', '\r']) {
        return Err(TemplateError::Forbidden {
            what: "a line break",
        });
    }
    if s.contains('$') {
        return Err(TemplateError::Forbidden {
            what: "`$` (iPXE expands ${...} settings)",
        });
    }
    Ok(())
}

/// What a machine boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// Shown at the top of the script and on the machine's console.
    pub title: String,
    pub kernel_url: String,
    pub initrd_url: String,
    /// Kernel command line, already filled in.
    pub cmdline: String,
}

/// Renders the iPXE script. The initrd is named after the last segment of its
/// URL, and `initrd=NAME` is put on the kernel command line because EFI
/// kernels find the initrd only that way.
pub fn render(s: &Script) -> String {
    let initrd_name = s.initrd_url.rsplit('/').next().unwrap_or("initrd.img");
    format!(
        "#!ipxe\n\
         echo Levee: {title}\n\
         kernel {kernel} initrd={initrd_name} {cmdline}\n\
         initrd {initrd}\n\
         boot\n",
        title = one_line(&s.title),
        kernel = s.kernel_url,
        initrd = s.initrd_url,
        cmdline = s.cmdline,
    )
}

/// A script that tells the operator on the console why this machine does not
/// boot, then leaves iPXE so the firmware tries its next boot device.
pub fn render_refusal(reason: &str) -> String {
    format!(
        "#!ipxe\necho Levee will not boot this machine: {}\nsleep 10\nexit 1\n",
        one_line(reason)
    )
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() || c == '$' { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<&'static str, String> {
        [
            ("url", "http://10.0.0.1".to_string()),
            ("mac", "52:54:00:00:00:01".to_string()),
        ]
        .into()
    }

    #[test]
    fn fills_variables_and_literal_braces() {
        let out = fill_template("a={url} b={{x}} mac={mac}", &vars()).unwrap();
        assert_eq!(out, "a=http://10.0.0.1 b={x} mac=52:54:00:00:00:01");
    }

    #[test]
    fn rejects_unknown_and_unclosed_variables_and_ipxe_syntax() {
        let e = fill_template("x={nope}", &vars()).unwrap_err();
        assert!(
            e.to_string().contains("{nope}") && e.to_string().contains("{url}"),
            "{e}"
        );
        assert_eq!(
            fill_template("x={url", &vars()),
            Err(TemplateError::Unclosed { at: 2 })
        );
        assert!(fill_template("x=${net0/mac}", &vars()).is_err());
    }

    #[test]
    fn script_names_the_initrd_for_efi() {
        let s = render(&Script {
            title: "profile default".into(),
            kernel_url: "http://s/images/i/vmlinuz".into(),
            initrd_url: "http://s/images/i/initrd.img".into(),
            cmdline: "console=ttyS0".into(),
        });
        assert_eq!(
            s,
            "#!ipxe\necho Levee: profile default\n\
             kernel http://s/images/i/vmlinuz initrd=initrd.img console=ttyS0\n\
             initrd http://s/images/i/initrd.img\nboot\n"
        );
    }
}
