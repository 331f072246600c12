#version 330
uniform sampler2D sprite_atlas;  // RGBA, sprites side by side
uniform int sprite;
in vec2 v_local;
flat in int v_index;
out vec4 color;
void main() {
    ivec2 l = clamp(ivec2(floor(v_local)), ivec2(0), ivec2(sprite - 1));
    vec4 c = texelFetch(sprite_atlas, ivec2(v_index * sprite + l.x, l.y), 0);
    if (c.a < 0.5) discard;
    color = vec4(c.rgb, 1.0);
}
