#version 330
// Nearest-filtered texture lookup; RGB frames read alpha 1, HUD panels carry their own alpha.
uniform sampler2D u_image;
in vec2 v_uv;
out vec4 f_color;

void main() {
    f_color = texture(u_image, v_uv);
}
