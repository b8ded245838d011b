package main

import (
	"fmt"
	"net"

	"github.com/kernelbus/kernelbus/frontend"
	"github.com/rs/zerolog"
)

// tlsFlags are the HTTPS flags of serve and frontend.
type tlsFlags struct {
	cert, key, clientCA, clientAuth string
}

func (f *tlsFlags) register(fs *flagSet) {
	fs.StringVar(&f.cert, "tls-cert", "", "PEM certificate (chain) file: serve HTTPS; read again when it changes")
	fs.StringVar(&f.key, "tls-key", "", "PEM private key file of --tls-cert; read again when it changes")
	fs.StringVar(&f.clientCA, "tls-client-ca", "", "PEM file of the CAs that sign client certificates (mTLS)")
	fs.StringVar(&f.clientAuth, "tls-client-auth", "", "client certificates: none, request (verified if sent) or require; default require with --tls-client-ca, else none")
}

func (f *tlsFlags) options() frontend.TLSOptions {
	return frontend.TLSOptions{CertFile: f.cert, KeyFile: f.key, ClientCAFile: f.clientCA, ClientAuth: f.clientAuth}
}

// listen opens the gateway API's listener on addr: plain HTTP, or HTTPS
// when the TLS flags say so. It returns the URL scheme clients use.
func listen(addr string, tf tlsFlags, log zerolog.Logger) (ln net.Listener, scheme string, err error) {
	o := tf.options()
	if o.Enabled() {
		// Check the files before taking the port, so a typo does not
		// look like a busy address.
		if _, err := frontend.NewTLSConfig(o, log); err != nil {
			return nil, "", err
		}
	}
	raw, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("--listen %s: %w", addr, err)
	}
	if !o.Enabled() {
		return raw, "http", nil
	}
	ln, err = frontend.TLSListener(raw, o, log)
	if err != nil {
		raw.Close()
		return nil, "", err
	}
	return ln, "https", nil
}
