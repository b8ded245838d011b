package frontend

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"sigs.k8s.io/yaml"
)

// The OpenAPI check: every response the REST tests receive through
// doHTTP is validated against openapi.yaml (status documented, JSON body
// matching its schema), so the document cannot drift from what the
// front-end answers.

var (
	openAPIOnce   sync.Once
	openAPIRouter routers.Router
	openAPIErr    error
)

func openAPIDoc() (routers.Router, error) {
	openAPIOnce.Do(func() {
		loader := openapi3.NewLoader()
		doc, err := loader.LoadFromData(openAPIYAML)
		if err != nil {
			openAPIErr = err
			return
		}
		if err := doc.Validate(context.Background()); err != nil {
			openAPIErr = err
			return
		}
		// Requests go to test servers on random ports: match paths only.
		doc.Servers = nil
		openAPIRouter, openAPIErr = legacy.NewRouter(doc)
	})
	return openAPIRouter, openAPIErr
}

// checkOpenAPI validates one exchange.
func checkOpenAPI(t testing.TB, req *http.Request, resp *http.Response, body []byte) {
	t.Helper()
	router, err := openAPIDoc()
	if err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	if req.Method == http.MethodOptions {
		return // CORS preflights are the browser's, not the API's
	}
	// The document's paths are relative to the base URL; the tests that
	// set one (/gw/) have it stripped here.
	r := req.Clone(context.Background())
	u := *req.URL
	segs := strings.Split(strings.Trim(u.Path, "/"), "/")
	for i, seg := range segs {
		if seg == "api" || seg == "kernelspecs" || seg == "healthz" || seg == "readyz" || seg == "metrics" {
			u.Path = "/" + strings.Join(segs[i:], "/")
			break
		}
	}
	r.URL = &u
	route, params, err := router.FindRoute(r)
	if err != nil {
		// Not a documented path: only the front-end's catch-all 404 (and
		// the method-not-allowed answers) may answer it.
		if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("openapi: %s %s answered %d but is not in openapi.yaml: %v", req.Method, req.URL.Path, resp.StatusCode, err)
		}
		checkErrorBody(t, req, resp, body)
		return
	}
	ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: r, PathParams: params, Route: route},
		Status:                 resp.StatusCode,
		Header:                 resp.Header,
		Body:                   io.NopCloser(bytes.NewReader(body)),
		Options: &openapi3filter.Options{
			IncludeResponseStatus: true,
			MultiError:            true,
			// Only JSON bodies have schemas worth checking; the others
			// (files, YAML, Prometheus text, event streams) are checked
			// for their content type.
			ExcludeResponseBody: ct != "application/json" || len(body) == 0,
		},
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		t.Errorf("openapi: %s %s -> %d %s does not match openapi.yaml: %v", req.Method, req.URL.Path, resp.StatusCode, truncate(body), err)
	}
}

// checkErrorBody checks an undocumented path's answer is the error shape.
func checkErrorBody(t testing.TB, req *http.Request, resp *http.Response, body []byte) {
	t.Helper()
	var e struct {
		Reason  *string `json:"reason"`
		Message *string `json:"message"`
	}
	if json.Unmarshal(body, &e) != nil || e.Reason == nil || e.Message == nil {
		t.Errorf("openapi: %s %s -> %d: not an error {reason, message}: %s", req.Method, req.URL.Path, resp.StatusCode, truncate(body))
	}
}

func truncate(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "..."
	}
	return string(b)
}

// TestOpenAPIDocument checks the document is valid OpenAPI 3, that it is
// served as YAML and JSON without authentication, and that it covers
// every route the front-end registers.
func TestOpenAPIDocument(t *testing.T) {
	env := newEnv(t, Config{Token: "secret"})
	if _, err := openAPIDoc(); err != nil {
		t.Fatal(err)
	}
	resp, data := env.do("GET", "api/swagger.yaml", nil, nil, nil)
	if resp.StatusCode != 200 || !bytes.Equal(data, openAPIYAML) {
		t.Fatalf("swagger.yaml: %d, %d bytes", resp.StatusCode, len(data))
	}
	var fromJSON map[string]any
	resp, _ = env.do("GET", "api/swagger.json", nil, nil, &fromJSON)
	if resp.StatusCode != 200 || fromJSON["openapi"] != "3.0.3" {
		t.Fatalf("swagger.json: %d %v", resp.StatusCode, fromJSON["openapi"])
	}
	var fromYAML map[string]any
	if err := yaml.Unmarshal(openAPIYAML, &fromYAML); err != nil {
		t.Fatal(err)
	}
	if len(fromYAML["paths"].(map[string]any)) != len(fromJSON["paths"].(map[string]any)) {
		t.Fatal("swagger.json and swagger.yaml differ")
	}

	doc, err := openapi3.NewLoader().LoadFromData(openAPIYAML)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range env.fe.App().GetRoutes(true) {
		if r.Method == "USE" || r.Path == "/" || r.Path == "/ui" || r.Path == "/ui/*" {
			continue // the web UI's pages are not API
		}
		// Fiber's :param and * become OpenAPI's {param}.
		p := r.Path
		parts := strings.Split(p, "/")
		for i, s := range parts {
			if strings.HasPrefix(s, ":") {
				parts[i] = "{" + strings.TrimPrefix(s, ":") + "}"
			}
		}
		p = strings.Join(parts, "/")
		p = strings.Replace(p, "/{name}/*", "/{name}/{file}", 1)
		p = strings.Replace(p, "/api/kernels/{id}", "/api/kernels/{kernel_id}", 1)
		p = strings.Replace(p, "/api/sessions/{id}", "/api/sessions/{session_id}", 1)
		item := doc.Paths.Find(p)
		if r.Method == "HEAD" && item != nil && item.Get != nil {
			continue // Fiber answers HEAD for every GET
		}
		if item == nil || item.GetOperation(r.Method) == nil {
			t.Errorf("route %s %s is not in openapi.yaml (as %s)", r.Method, r.Path, p)
		}
	}
}
