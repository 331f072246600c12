#version 330
// First-person maze: two programs share this file and maze.frag. Without PICKUPS it is
// the raycasting pass: one triangle that covers the frame, made from gl_VertexID (no
// vertex buffer). With PICKUPS defined (world/maze3d.py adds the line) it draws the
// pickups as camera-facing quads (instanced, 4-vertex strips) at their true depth.

#ifndef PICKUPS
void main() {
    vec2 p = vec2(gl_VertexID == 1 ? 3.0 : -1.0, gl_VertexID == 2 ? 3.0 : -1.0);
    gl_Position = vec4(p, 0.0, 1.0);
}
#else
const float PICKUP_HALF_W = 0.14;  // map units
const float PICKUP_HALF_H = 0.19;
const float PICKUP_Z = 0.42;       // centre height above the floor (the eye is at 0.5)

uniform vec2 pos;     // camera position, map units
uniform vec2 dir;     // unit view direction
uniform vec2 plane;   // the right-hand vector * tan(fov / 2)
uniform float far;    // depth that maps to 1.0 in the depth buffer
in vec4 in_pickup;    // x, y, palette index, pickup id
out vec2 v_uv;        // -1..1 across the quad, v up
flat out vec4 v_pickup;
flat out float v_depth;

void main() {
    vec2 corner = vec2(gl_VertexID & 1, gl_VertexID >> 1) * 2.0 - 1.0;
    vec2 rel = in_pickup.xy - pos;
    float depth = dot(rel, dir);
    float tan_half = length(plane);
    float lateral = dot(rel, plane) / tan_half + corner.x * PICKUP_HALF_W;
    float height = PICKUP_Z + corner.y * PICKUP_HALF_H;
    // x_ndc = lateral / (depth tan), y_ndc flipped (frames are read back top row first),
    // window depth = depth / far, the same linear depth the raycasting pass writes
    gl_Position = vec4(lateral / tan_half, -(height - 0.5) / tan_half,
                       (2.0 * depth / far - 1.0) * depth, depth);
    v_uv = corner;
    v_pickup = in_pickup;
    v_depth = depth;
}
#endif
