// Command token mints a development client token (a JWT) for a ringcast
// cluster with auth on:
//
//	go run ./scripts/token -secret S -sub alice -channels 'room:*,user:{sub}' -exp 1h
//	go run ./scripts/token -key private.pem -kid k1 -sub alice
//
// It prints the token on stdout. -secret falls back to
// RINGCAST_TOKEN_HMAC_SECRET, the variable the balancer and node read.
// Production tokens come from the application's own backend.
package main

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ringcast/ringcast/pkg/flagenv"
	"github.com/ringcast/ringcast/pkg/wire"
)

func main() {
	if err := run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "token:", err)
		os.Exit(1)
	}
}

func run(args []string, env func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	secret := fs.String("secret", "", "HMAC secret (default $"+flagenv.EnvName("token-hmac-secret")+")")
	keyFile := fs.String("key", "", "PEM private key (RSA, EC or Ed25519) instead of -secret")
	kid := fs.String("kid", "", "kid header (the JWKS key id)")
	alg := fs.String("alg", "", "signing algorithm (default HS256, RS256, ES256/384/512 or EdDSA by key)")
	sub := fs.String("sub", "", "client id (required)")
	channels := fs.String("channels", "", "comma-separated channel patterns it may subscribe to (room:*, user:{sub}); empty = every channel")
	publish := fs.String("publish", "", "comma-separated channel patterns it may publish to; empty = the same as -channels")
	noSend := fs.Bool("no-send", false, "forbid direct messages")
	exp := fs.Duration("exp", time.Hour, "lifetime; 0 = no exp claim")
	iss := fs.String("iss", "", "iss claim")
	aud := fs.String("aud", "", "aud claim")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := wire.ValidateClientID(*sub); err != nil {
		return fmt.Errorf("-sub: %w", err)
	}
	claims := jwt.MapClaims{"sub": *sub, "iat": time.Now().Unix()}
	if *exp > 0 {
		claims["exp"] = time.Now().Add(*exp).Unix()
	}
	if *channels != "" {
		claims["channels"] = list(*channels)
	}
	if *publish != "" {
		claims["publish"] = list(*publish)
	}
	if *noSend {
		claims["send"] = false
	}
	if *iss != "" {
		claims["iss"] = *iss
	}
	if *aud != "" {
		claims["aud"] = *aud
	}
	method, key, err := signer(*secret, *keyFile, *alg, env)
	if err != nil {
		return err
	}
	if method == nil {
		return fmt.Errorf("unknown -alg %q", *alg)
	}
	t := jwt.NewWithClaims(method, claims)
	if *kid != "" {
		t.Header["kid"] = *kid
	}
	s, err := t.SignedString(key)
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	fmt.Fprintln(stdout, s)
	return nil
}

func list(s string) []string {
	out := []string{}
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// signer picks the method and key from -secret or -key.
func signer(secret, keyFile, alg string, env func(string) string) (jwt.SigningMethod, any, error) {
	if keyFile == "" {
		if secret == "" {
			secret = env(flagenv.EnvName("token-hmac-secret"))
		}
		if secret == "" {
			return nil, nil, errors.New("-secret or -key is required")
		}
		return method(alg, "HS256"), []byte(secret), nil
	}
	b, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, nil, fmt.Errorf("%s: no PEM block", keyFile)
	}
	var key any
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyFile, err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return method(alg, "RS256"), k, nil
	case *ecdsa.PrivateKey:
		return method(alg, map[int]string{256: "ES256", 384: "ES384", 521: "ES512"}[k.Curve.Params().BitSize]), k, nil
	case ed25519.PrivateKey:
		return method(alg, "EdDSA"), k, nil
	}
	return nil, nil, fmt.Errorf("%s: unsupported key type %T", keyFile, key)
}

func method(alg, def string) jwt.SigningMethod {
	if alg == "" {
		alg = def
	}
	return jwt.GetSigningMethod(alg)
}
