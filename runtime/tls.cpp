// TLS context set-up shared by klingd, segmind-sim and the tests.
#include "runtime/tls.hpp"

#include <openssl/x509.h>
#include <stdexcept>

namespace klingd::tls {
namespace ssl = boost::asio::ssl;

ssl::context make_client_context(const std::string& extra_ca_file) {
    ssl::context ctx(ssl::context::tls_client);
    ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                    ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
    ctx.set_default_verify_paths();
    if (!extra_ca_file.empty()) {
        boost::system::error_code ec;
        ctx.load_verify_file(extra_ca_file, ec);
        if (ec)
            throw std::runtime_error("cannot load CA file " + extra_ca_file + ": " + ec.message());
    }
    ctx.set_verify_mode(ssl::verify_peer);
    return ctx;
}

ssl::context make_server_context(const std::string& cert_file, const std::string& key_file) {
    ssl::context ctx(ssl::context::tls_server);
    ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                    ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
    boost::system::error_code ec;
    ctx.use_certificate_chain_file(cert_file, ec);
    if (ec)
        throw std::runtime_error("cannot load certificate " + cert_file + ": " + ec.message());
    ctx.use_private_key_file(key_file, ssl::context::pem, ec);
    if (ec)
        throw std::runtime_error("cannot load private key " + key_file + ": " + ec.message());
    return ctx;
}

std::string verify_failure_reason(SSL* ssl) {
    long rc = SSL_get_verify_result(ssl);
    if (rc == X509_V_OK)
        return {};
    return X509_verify_cert_error_string(rc);
}

} // namespace klingd::tls
