//! Reading PEM files and writing certificate files with the right permissions.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Error, Result};

/// Who may read a written file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileMode {
    /// Certificates: readable by everyone (0644).
    Public,
    /// Private keys: readable by the owner only (0600).
    Secret,
}

impl FileMode {
    fn bits(self) -> u32 {
        match self {
            FileMode::Public => 0o644,
            FileMode::Secret => 0o600,
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to `path` with `mode`, refusing to replace an existing file unless `force`.
///
/// The file is created with its final mode, so a key is never readable by others even briefly,
/// and an overwrite goes through a temporary file and a rename, so a crash leaves either the old
/// or the new file, never half of one.
pub fn write_file(path: &Path, contents: &[u8], mode: FileMode, force: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;

    if !force && path.exists() {
        return Err(Error::Exists(path.to_owned()));
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = dir {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| io_error(path)(std::io::ErrorKind::InvalidInput.into()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", file_name.to_string_lossy()));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode.bits())
        .open(&tmp)
        .map_err(io_error(&tmp))?;
    file.write_all(contents).map_err(io_error(&tmp))?;
    file.sync_all().map_err(io_error(&tmp))?;
    drop(file);
    if !force && path.exists() {
        let _ = fs::remove_file(&tmp);
        return Err(Error::Exists(path.to_owned()));
    }
    fs::rename(&tmp, path).map_err(io_error(path))?;
    Ok(())
}

/// Reads every certificate in a PEM file; at least one must be there.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = fs::read(path).map_err(io_error(path))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            path: path.to_owned(),
            what: format!("not a PEM certificate file ({e})"),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            path: path.to_owned(),
            what: "no certificate found".into(),
        });
    }
    Ok(certs)
}

/// Reads one private key from a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = fs::read(path).map_err(io_error(path))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| Error::Pem {
        path: path.to_owned(),
        what: format!("no usable private key ({e})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secret_files_are_owner_only_and_never_silently_replaced() {
        // A key is written 0600, a second write without force is refused and changes nothing.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        write_file(&path, b"one", FileMode::Secret, false).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            write_file(&path, b"two", FileMode::Secret, false),
            Err(Error::Exists(_))
        ));
        assert_eq!(fs::read(&path).unwrap(), b"one");
        write_file(&path, b"two", FileMode::Secret, true).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
    }

    #[test]
    fn a_file_without_certificates_is_a_clear_error() {
        // An empty PEM file names the file and says what is missing.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        fs::write(&path, "hello\n").unwrap();
        let err = read_certs(&path).unwrap_err().to_string();
        assert!(
            err.contains("ca.crt") && err.contains("no certificate"),
            "{err}"
        );
    }
}
