/**
 * TLS on both legs: the certificate and key that the listener serves wss://
 * with, and how the certificate of a wss:// upstream is verified. Files are
 * read and checked once, when the options are resolved, so a bad file stops
 * the relay before it listens.
 */

import { X509Certificate, createPrivateKey } from "node:crypto";
import { readFileSync } from "node:fs";
import { ConfigError } from "./config.ts";

/** PEM certificate chain (leaf first) and unencrypted private key: the `tls` option of `Bun.serve`. */
export interface ServerTls {
  cert: string;
  key: string;
}

/**
 * Verification of an upstream's certificate: the `tls` option of Bun's
 * client `WebSocket`. Bun 1.4.4 checks the chain and the host name (or IP
 * address) of the URL against the certificate.
 */
export interface UpstreamTls {
  /**
   * PEM CA certificates to trust instead of the default ones. With it set,
   * Bun 1.4.4 no longer trusted a CA from `SSL_CERT_FILE` or
   * `NODE_EXTRA_CA_CERTS`, and Bun's type docs say the bundled roots are
   * replaced too.
   */
  ca?: string | string[];
  /**
   * `false` accepts any certificate. Default `true`. `dialUpstream` and the
   * relay set it explicitly, because Bun 1.4.4 lets `NODE_TLS_REJECT_UNAUTHORIZED=0`
   * turn verification off when the option is left unset.
   */
  rejectUnauthorized?: boolean;
}

/** The TLS fields of `RelayOptions`, as paths and a switch. */
export interface TlsFileOptions {
  tlsCertFile?: string;
  tlsKeyFile?: string;
  upstreamCaFile?: string;
  upstreamInsecure?: boolean;
}

/** TLS settings after the files were read and checked. */
export interface ResolvedTls {
  /** Undefined for a plain ws:// listener. */
  serverTls: ServerTls | undefined;
  upstreamTls: UpstreamTls;
}

/** Logged once at start when upstream certificates are not verified. */
export const INSECURE_UPSTREAM_WARNING =
  "upstream certificate verification is off (--upstream-insecure): the relay accepts any certificate from the upstream, so anyone on the path to it can read and change the traffic";

const CERTIFICATE_BLOCK = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;
const PRIVATE_KEY_LINE = /-----BEGIN [A-Z ]*PRIVATE KEY-----/;
export const READ_ERROR_REASONS: Record<string, string> = {
  ENOENT: "file not found",
  EACCES: "permission denied",
  EISDIR: "it is a directory",
};

/**
 * Reads the TLS files named in `options` and checks them; throws
 * `ConfigError` naming the option as `name` spells it. `upstream` is the
 * resolved upstream URL, or undefined for the built-in echo upstream.
 */
export function resolveTls(
  options: TlsFileOptions,
  upstream: string | undefined,
  name: (field: keyof TlsFileOptions) => string,
): ResolvedTls {
  return {
    serverTls: resolveServerTls(options, name),
    upstreamTls: resolveUpstreamTls(options, upstream, name),
  };
}

function resolveServerTls(options: TlsFileOptions, name: (field: keyof TlsFileOptions) => string): ServerTls | undefined {
  const certFlag = name("tlsCertFile");
  const keyFlag = name("tlsKeyFile");
  const certPath = options.tlsCertFile;
  const keyPath = options.tlsKeyFile;
  if (certPath === undefined && keyPath === undefined) return undefined;
  if (certPath === undefined || keyPath === undefined) {
    const [given, missing] = certPath === undefined ? [keyFlag, certFlag] : [certFlag, keyFlag];
    const path = certPath ?? keyPath ?? "";
    throw new ConfigError(
      given,
      path,
      `${given}: "${path}" was given without ${missing}; give both ${certFlag} (the PEM certificate chain) and ${keyFlag} (its private key) to serve wss://, or neither to serve ws://`,
    );
  }

  const cert = readPemFile(certFlag, certPath);
  const key = readPemFile(keyFlag, keyPath);
  const leaf = parseLeafCertificate(certFlag, certPath, cert);
  const privateKey = parsePrivateKey(keyFlag, keyPath, key);
  if (!leaf.checkPrivateKey(privateKey)) {
    throw new ConfigError(
      keyFlag,
      keyPath,
      `${keyFlag}: the key in "${keyPath}" does not match the certificate in ${certFlag} "${certPath}"; give the private key that the certificate was issued for`,
    );
  }
  return { cert, key };
}

function resolveUpstreamTls(
  options: TlsFileOptions,
  upstream: string | undefined,
  name: (field: keyof TlsFileOptions) => string,
): UpstreamTls {
  const caFlag = name("upstreamCaFile");
  const insecureFlag = name("upstreamInsecure");
  const caPath = options.upstreamCaFile;
  const insecure = options.upstreamInsecure === true;
  if (caPath !== undefined && insecure) {
    throw new ConfigError(
      insecureFlag,
      "true",
      `${insecureFlag}: cannot be combined with ${caFlag} "${caPath}"; drop ${insecureFlag} to verify the upstream against that bundle, or drop ${caFlag} to verify nothing`,
    );
  }

  const isSecureUpstream = upstream !== undefined && upstream.startsWith("wss:");
  if ((caPath !== undefined || insecure) && !isSecureUpstream) {
    const flag = caPath !== undefined ? caFlag : insecureFlag;
    const reason = upstream === undefined ? "no upstream is given (the built-in echo upstream is ws://)" : "the upstream is not a wss:// URL";
    throw new ConfigError(
      flag,
      caPath ?? "true",
      `${flag}: ${reason}, so there is no certificate to verify; use a wss:// upstream or drop ${flag}`,
    );
  }

  if (insecure) return { rejectUnauthorized: false };
  if (caPath === undefined) return { rejectUnauthorized: true };
  return { ca: readCaBundle(caFlag, caPath), rejectUnauthorized: true };
}

/** Reads a PEM bundle of CA certificates and returns each certificate's PEM block. */
function readCaBundle(flag: string, path: string): string[] {
  const certificates = readPemFile(flag, path).match(CERTIFICATE_BLOCK) ?? [];
  if (certificates.length === 0) {
    throw new ConfigError(
      flag,
      path,
      `${flag}: "${path}" contains no PEM certificate (-----BEGIN CERTIFICATE-----); give the CA certificates that sign the upstream's certificate, in PEM format`,
    );
  }
  certificates.forEach((block, index) => {
    try {
      new X509Certificate(block);
    } catch (error) {
      throw new ConfigError(
        flag,
        path,
        `${flag}: certificate ${index + 1} in "${path}" is invalid (${(error as Error).message}); replace it with a valid PEM certificate`,
      );
    }
  });
  return certificates;
}

/** Reads a file as text; throws `ConfigError` with the reason when it cannot. */
function readPemFile(flag: string, path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? "";
    const reason = READ_ERROR_REASONS[code] ?? (error as Error).message;
    throw new ConfigError(
      flag,
      path,
      `${flag}: cannot read "${path}" (${reason}); give the path of a PEM file that the relay's user can read`,
    );
  }
}

/** Parses the first certificate of a PEM chain, the one the key must match. */
function parseLeafCertificate(flag: string, path: string, text: string): X509Certificate {
  if (!text.includes("-----BEGIN CERTIFICATE-----")) {
    const hint = PRIVATE_KEY_LINE.test(text)
      ? "it contains a private key, so the two files may be swapped"
      : "give the certificate chain in PEM format, leaf certificate first";
    throw new ConfigError(flag, path, `${flag}: "${path}" contains no PEM certificate (-----BEGIN CERTIFICATE-----); ${hint}`);
  }
  try {
    return new X509Certificate(text);
  } catch (error) {
    throw new ConfigError(
      flag,
      path,
      `${flag}: the certificate in "${path}" is invalid (${(error as Error).message}); give the certificate chain in PEM format, leaf certificate first`,
    );
  }
}

function parsePrivateKey(flag: string, path: string, text: string): ReturnType<typeof createPrivateKey> {
  if (!PRIVATE_KEY_LINE.test(text)) {
    const hint = text.includes("-----BEGIN CERTIFICATE-----")
      ? "it contains a certificate, so the two files may be swapped"
      : "give the private key in PEM format";
    throw new ConfigError(flag, path, `${flag}: "${path}" contains no PEM private key (-----BEGIN ... PRIVATE KEY-----); ${hint}`);
  }
  try {
    return createPrivateKey(text);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ERR_MISSING_PASSPHRASE") {
      throw new ConfigError(
        flag,
        path,
        `${flag}: the key in "${path}" is encrypted, and wsbridge takes no passphrase; write a decrypted copy (openssl pkey -in ENCRYPTED -out PLAIN) that only the relay's user can read`,
      );
    }
    throw new ConfigError(
      flag,
      path,
      `${flag}: the key in "${path}" is invalid (${(error as Error).message}); give the private key in PEM format`,
    );
  }
}

/**
 * Rewrites Bun's dial error for a failed TLS handshake into a message for
 * the client and the log; returns null for any other failure. Bun 1.4.4
 * reports these as "TLS handshake failed: REASON", with an OpenSSL-style
 * code such as `UNABLE_TO_VERIFY_LEAF_SIGNATURE` on the event's error.
 */
export function describeTlsFailure(detail: string, code: string | undefined): string | null {
  const match = /^TLS handshake failed: (.*)$/s.exec(detail);
  if (match === null) return null;
  const reason = match[1] ?? "";
  const codeText = code === undefined || code === "" ? "" : ` (${code})`;
  const hint = reason.includes("WRONG_VERSION_NUMBER") ? "; the upstream may not serve TLS on that port" : "";
  return `upstream TLS handshake failed: ${reason}${codeText}${hint}`;
}
