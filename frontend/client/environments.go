package client

import (
	"context"
	"net/http"
	"net/url"
)

// Environment is a kernel environment as GET /api/environments/{name}
// shows it (the fields tests and tools read).
type Environment struct {
	Name       string   `json:"name"`
	RM         string   `json:"rm"`
	State      string   `json:"state"`
	Progress   int      `json:"progress"`
	Message    string   `json:"message"`
	Digest     string   `json:"digest"`
	Size       int64    `json:"size"`
	Resolved   []string `json:"resolved"`
	Kernelspec string   `json:"kernelspec"`
}

// CreateEnvironment POSTs /api/environments with req (name, python, pip or
// requirements, rm, resources, ...); the build runs in the background.
func (c *Client) CreateEnvironment(ctx context.Context, req map[string]any) (*Environment, error) {
	var e Environment
	err := c.do(ctx, http.MethodPost, "/api/environments", req, &e)
	return &e, err
}

// Environment GETs one environment.
func (c *Client) Environment(ctx context.Context, name string) (*Environment, error) {
	var e Environment
	err := c.do(ctx, http.MethodGet, "/api/environments/"+url.PathEscape(name), nil, &e)
	return &e, err
}

// DeleteEnvironment deletes an environment and its kernelspec (running
// kernels of it go on).
func (c *Client) DeleteEnvironment(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/api/environments/"+url.PathEscape(name), nil, nil)
}
