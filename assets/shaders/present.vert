#version 330
// The play window: one textured quad per pane or overlay, placed by u_rect.
uniform vec4 u_rect;   // x0, y0, x1, y1 of the quad in normalized device coordinates
in vec2 in_corner;     // (0, 0) .. (1, 1), y up
out vec2 v_uv;

void main() {
    // images are uploaded row 0 first, so texture row 0 (v = 0) is the image's top row
    v_uv = vec2(in_corner.x, 1.0 - in_corner.y);
    gl_Position = vec4(mix(u_rect.xy, u_rect.zw, in_corner), 0.0, 1.0);
}
