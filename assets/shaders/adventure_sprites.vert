#version 330
// Instanced sprites: one quad per instance at a world position, texels from the atlas.
in vec2 in_corner;        // unit quad corner, (0,0)..(1,1)
in vec3 in_sprite;        // world x, world y (top-left), atlas index
uniform vec2 cam;
uniform float px;
uniform vec2 frame_size;  // frame pixels
uniform int sprite;       // sprite size in world pixels
out vec2 v_local;
flat out int v_index;
void main() {
    vec2 w = in_sprite.xy + in_corner * float(sprite);
    vec2 screen = (w - cam) / px;
    gl_Position = vec4(screen / frame_size * 2.0 - 1.0, 0.0, 1.0);
    v_local = in_corner * float(sprite);
    v_index = int(in_sprite.z);
}
